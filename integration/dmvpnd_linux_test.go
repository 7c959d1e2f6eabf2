package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/integration/vm"
	"github.com/opendmvpn/dmvpn/lab/testbed"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// daemonNode is dmvpnd running in a testbed node.
type daemonNode struct {
	t      testing.TB
	name   string
	node   *testbed.Node
	bin    string
	args   []string // more command-line arguments
	env    []string // more environment variables
	config string   // the YAML file
	socket string
	proc   *testbed.Proc
	client *control.Client

	evMu   sync.Mutex
	events []string     // the debug nhrp stream, for failure reports
	evs    []nhrp.Event // the same, for eventTime
}

// startDaemon writes a node's YAML configuration and starts dmvpnd with
// it (and args); it returns once the control socket answers.
func startDaemon(t testing.TB, bin string, n *testbed.Node, yaml string, args ...string) *daemonNode {
	t.Helper()
	return startDaemonEnv(t, bin, n, yaml, nil, args...)
}

// startDaemonEnv is startDaemon with more environment variables.
func startDaemonEnv(t testing.TB, bin string, n *testbed.Node, yaml string, env []string, args ...string) *daemonNode {
	t.Helper()
	dir := t.TempDir()
	d := &daemonNode{t: t, name: n.Name, node: n, bin: bin, args: args, env: env,
		config: filepath.Join(dir, n.Name+".yaml"), socket: filepath.Join(dir, n.Name+".sock")}
	yaml = strings.ReplaceAll(yaml, "@SOCKET@", d.socket)
	if err := os.WriteFile(d.config, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	d.client = control.NewClient(d.socket)
	d.start()
	t.Cleanup(d.stop)
	t.Cleanup(func() {
		if t.Failed() {
			d.evMu.Lock()
			t.Logf("%s: NHRP events:\n%s", d.name, strings.Join(d.events, "\n"))
			d.evMu.Unlock()
			if d.proc != nil {
				t.Logf("%s: dmvpnd output:\n%s", d.name, d.proc.Output())
			}
		}
	})
	return d
}

func (d *daemonNode) start() {
	d.t.Helper()
	p, err := d.node.Start(testbed.ProcSpec{Name: "dmvpnd-" + d.name, Args: append([]string{d.bin, "-c", d.config}, d.args...), Env: d.env})
	if err != nil {
		d.t.Fatal(err)
	}
	d.proc = p
	answer := 15 * time.Second
	if vm.InGuest() {
		answer = 60 * time.Second // TCG on a shared machine: charon alone took 7 s to start
	}
	if err := d.client.Ping(context.Background(), answer); err != nil {
		d.t.Fatalf("%s: dmvpnd does not answer: %v\n%s", d.name, err, p.Output())
	}
	// Record the live event stream (packets included) until the daemon
	// stops.
	go d.client.Events(context.Background(), true, func(ev nhrp.Event) error {
		line := ev.Time.Format("15:04:05.000") + " " + ev.Kind.String()
		if ev.Packet != nil {
			line += " " + ev.Packet.Dir + " " + ev.Packet.Peer.String() + " " + ev.Packet.Summary + ev.Packet.Error
		} else {
			line += " " + jsonString(ev)
		}
		d.evMu.Lock()
		d.events = append(d.events, line)
		d.evs = append(d.evs, ev)
		d.evMu.Unlock()
		return nil
	})
}

// eventTime returns when (the daemon's clock) the first event matching f
// happened, as far as the event stream has delivered.
func (d *daemonNode) eventTime(f func(nhrp.Event) bool) (time.Time, bool) {
	d.evMu.Lock()
	defer d.evMu.Unlock()
	for _, ev := range d.evs {
		if f(ev) {
			return ev.Time, true
		}
	}
	return time.Time{}, false
}

// stop stops dmvpnd with SIGTERM and waits for it.
func (d *daemonNode) stop() {
	if d.proc == nil {
		return
	}
	d.proc.Signal(syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.proc.Wait(ctx); err != nil && ctx.Err() != nil {
		d.proc.Stop()
	}
	d.proc = nil
}

// kill stops dmvpnd without letting it clean up (a crash).
func (d *daemonNode) kill() {
	d.proc.Signal(syscall.SIGKILL)
	d.proc.Wait(context.Background())
	d.proc = nil
}

func (d *daemonNode) get(path string, out any) {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := d.client.Get(ctx, path, out); err != nil {
		d.t.Fatalf("%s: GET %s: %v", d.name, path, err)
	}
}

// cache returns the node's NHRP cache.
func (d *daemonNode) cache() []nhrp.CacheEntry {
	d.t.Helper()
	var r control.CacheResponse
	d.get(control.PathCache, &r)
	return r.Entries
}

// entry returns the cache entry for a prefix.
func (d *daemonNode) entry(p netip.Prefix) (nhrp.CacheEntry, bool) {
	d.t.Helper()
	for _, e := range d.cache() {
		if e.Proto == p {
			return e, true
		}
	}
	return nhrp.CacheEntry{}, false
}

// traffic returns the node's NHRP and data-plane counters.
func (d *daemonNode) traffic() control.TrafficResponse {
	d.t.Helper()
	var r control.TrafficResponse
	d.get(control.PathTraffic, &r)
	return r
}

// peerTx returns the data packets the node sent to an NBMA peer.
func (d *daemonNode) peerTx(nbma netip.Addr) uint64 {
	d.t.Helper()
	tr := d.traffic()
	if tr.Dataplane == nil {
		d.t.Fatalf("%s: no data-plane counters", d.name)
	}
	for _, p := range tr.Dataplane.Peers {
		if p.NBMA == nbma {
			return p.TxPackets
		}
	}
	return 0
}

// waitFor polls cond every 50 ms until it holds or timeout passes, and
// returns how long it took.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(start)
}

// requireTestbed skips when namespaces cannot be built here.
func requireTestbed(t testing.TB) {
	t.Helper()
	if err := testbed.Available(); err != nil {
		t.Skipf("needs root and network namespaces: %v", err)
	}
}

// buildDmvpnd builds the daemon for the test; in a VM, the guest half runs
// the one the host half built.
func buildDmvpnd(t testing.TB) string {
	t.Helper()
	if bin, ok := guestDmvpnd(t); ok {
		return bin
	}
	return vm.GoBuild(t, "./cmd/dmvpnd")
}

// regexpListening matches tcpdump's ready line.
var regexpListening = regexp.MustCompile(`listening on`)

// capture is a tcpdump running in a node, and the file it writes.
type capture struct {
	proc *testbed.Proc
	path string
}

// startCapture captures NHRP in GRE (GRE protocol 0x2001 behind a 20-byte
// IPv4 header) on iface of n.
func startCapture(t testing.TB, n *testbed.Node, iface string) *capture {
	t.Helper()
	return startTcpdump(t, n, "tcpdump", "nhrp.pcap", iface, "ip proto 47 and ip[22:2] = 0x2001")
}

// startTcpdump runs tcpdump in n on iface with filter, writing file in a
// temporary directory, and returns once it listens; it stops at cleanup.
func startTcpdump(t testing.TB, n *testbed.Node, name, file, iface, filter string) *capture {
	t.Helper()
	path := filepath.Join(t.TempDir(), file)
	args := []string{"tcpdump", "-i", iface, "--immediate-mode", "-U", "-n", "-Z", "root", "-w", path}
	if vm.InGuest() {
		// Under TCG tcpdump falls behind a burst and the kernel drops
		// what its 2 MiB ring cannot hold (half of 20 GRE packets
		// injected at once): a larger ring.
		args = append(args, "-B", "16384")
	}
	p, err := n.Start(testbed.ProcSpec{Name: name, Args: append(args, filter)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, _, err := p.WaitFor(ctx, regexpListening, 0); err != nil {
		t.Fatalf("tcpdump: %v\n%s", err, p.Output())
	}
	t.Cleanup(p.Stop)
	return &capture{proc: p, path: path}
}

// stop ends the capture and returns the file.
func (c *capture) stop() string {
	time.Sleep(300 * time.Millisecond) // packets in flight reach the capture
	c.proc.Signal(syscall.SIGINT)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c.proc.Wait(ctx)
	return c.path
}

// pingTTL pings once from a node and returns the reply's TTL.
func pingTTL(t testing.TB, n *testbed.Node, dst netip.Addr) (int, error) {
	t.Helper()
	out, err := n.Run(context.Background(), "ping", "-n", "-c", "1", "-W", "2", dst.String())
	if err != nil {
		return 0, fmt.Errorf("ping %s from %s: %v: %s", dst, n.Name, err, out)
	}
	m := regexp.MustCompile(`ttl=(\d+)`).FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("no ttl in %q", out)
	}
	var ttl int
	fmt.Sscan(m[1], &ttl)
	return ttl, nil
}

// pingTTLs sends count pings 0.2 s apart from a node, in one ping process
// (process starts are dear under TCG), and returns the replies' TTLs in
// order; a lost reply is an error.
func pingTTLs(t *testing.T, n *testbed.Node, dst netip.Addr, count int) ([]int, error) {
	t.Helper()
	out, err := n.Run(context.Background(), "ping", "-n", "-c", fmt.Sprint(count), "-i", "0.2", "-W", "2", dst.String())
	if err != nil {
		return nil, fmt.Errorf("ping %s from %s: %v: %s", dst, n.Name, err, out)
	}
	var ttls []int
	for _, m := range regexp.MustCompile(`ttl=(\d+)`).FindAllStringSubmatch(out, -1) {
		var ttl int
		fmt.Sscan(m[1], &ttl)
		ttls = append(ttls, ttl)
	}
	if len(ttls) != count {
		return ttls, fmt.Errorf("ping %s from %s: %d replies of %d: %s", dst, n.Name, len(ttls), count, out)
	}
	return ttls, nil
}

// jsonString renders v for failure messages.
func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
