package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/opendmvpn/dmvpn/internal/lab"
)

// labEnv is a lab brought up by the dmvpn-lab binary for a test, with its
// own state directory and a namespace prefix the testbed's sweep removes
// if the test is killed.
type labEnv struct {
	bin    string // directory of dmvpnd, dmvpnctl, dmvpn-lab
	dir    string
	prefix string
}

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// buildCommands builds the three commands once per test binary.
func buildCommands(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "dmvpn-bin")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", buildDir+"/", "./cmd/dmvpnd", "./cmd/dmvpnctl", "./cmd/dmvpn-lab")
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildDir
}

func (l *labEnv) run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(l.bin, "dmvpn-lab"), append([]string{"--dir", l.dir, "--prefix", l.prefix}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (l *labEnv) socket(node string) string { return filepath.Join(l.dir, node, "dmvpnd.sock") }

// ctl runs dmvpnctl against a node.
func (l *labEnv) ctl(t *testing.T, node string, args ...string) string {
	t.Helper()
	out, err := exec.Command(filepath.Join(l.bin, "dmvpnctl"), append([]string{"--socket", l.socket(node)}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("dmvpnctl %s on %s: %v\n%s", strings.Join(args, " "), node, err, out)
	}
	return string(out)
}

// TestLab is the lab's whole cycle as a user runs it: up (convergence,
// show dmvpn everywhere, the shortcut demonstration), up again, status,
// exec, the interactive shell under a pseudo-terminal, every show in json,
// a reload with an invalid file on a live daemon, the metrics endpoint,
// then down, after which nothing of the lab is left.
func TestLab(t *testing.T) {
	needRoot(t, "ping", "nft")
	l := &labEnv{bin: buildCommands(t), dir: filepath.Join(t.TempDir(), "lab"), prefix: fmt.Sprintf("dmvt%dxlab", os.Getpid())}
	t.Cleanup(func() { os.RemoveAll(l.bin) }) // only TestLab uses the built commands
	t.Cleanup(func() {
		if out, err := l.run(t, "down"); err != nil {
			t.Logf("cleanup down: %v\n%s", err, out)
		}
	})

	out, err := l.run(t, "up")
	if err != nil {
		t.Fatalf("dmvpn-lab up: %v\n%s", err, out)
	}
	for _, want := range []string{
		"Converged in", "======== hub1: show dmvpn ========", "======== spoke3: show dmvpn ========",
		"Type:Hub, NHRP Peers:3,", "203.0.113.1          172.16.3.1    UP", // spoke3 behind NAT, seen at its public address
		"first reply: ttl=61", "spoke1# show ip nhrp shortcut", "10.2.0.0/24 via 172.16.2.1",
		"via 172.16.2.1 dev gre1 table 42", "replies with ttl=62", "received 0 data packets", "Spoke-to-spoke traffic goes direct.",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("up output lacks %q", want)
		}
	}
	if t.Failed() {
		t.Fatalf("up output:\n%s", out)
	}

	t.Run("up again", func(t *testing.T) {
		out, err := l.run(t, "up")
		if err != nil || !strings.Contains(out, "The lab is already up (topology alpine, 10 namespaces") {
			t.Errorf("second up: %v\n%s", err, out)
		}
	})
	t.Run("status and exec", func(t *testing.T) {
		out, err := l.run(t, "status")
		if err != nil || strings.Count(out, "registered with 2/2 hubs") != 3 || !strings.Contains(out, "spoke3-nat nat      203.0.113.1") {
			t.Errorf("status: %v\n%s", err, out)
		}
		out, err = l.run(t, "exec", "spoke3-h1", "--", "ping", "-c", "1", "-W", "2", "10.1.0.2")
		if err != nil || !strings.Contains(out, "1 received") {
			t.Errorf("exec ping from behind the NAT: %v\n%s", err, out)
		}
		if out, err := l.run(t, "exec", "spoke1-h1", "--", "false"); err == nil {
			t.Errorf("exec false succeeded:\n%s", out)
		}
		if out, err := l.run(t, "shell", "spoke1-h1"); err == nil || !strings.Contains(out, "runs no dmvpnd") {
			t.Errorf("shell on a host: %v\n%s", err, out)
		}
	})
	t.Run("shell", func(t *testing.T) { testShell(t, l) })
	t.Run("json", func(t *testing.T) {
		for _, node := range []string{"hub1", "spoke1", "spoke3"} {
			for _, cmd := range []string{"show dmvpn json", "show dmvpn detail json", "show ip nhrp json", "show ip nhrp cache detail json",
				"show ip nhrp nhs json", "show ip nhrp shortcut json", "show ip nhrp traffic json", "show running-config json", "show version json"} {
				out := l.ctl(t, node, strings.Fields(cmd)...)
				if !json.Valid([]byte(out)) {
					t.Errorf("%s on %s: not JSON:\n%s", cmd, node, out)
				}
			}
		}
	})
	t.Run("reload", func(t *testing.T) { testLabReload(t, l) })
	t.Run("metrics", func(t *testing.T) {
		body := metricsIn(t, l.prefix+"-spoke1")
		for _, want := range []string{`dmvpn_nhrp_nhs{state="up"} 2`, `dmvpn_nhrp_packets_total{direction="sent",type="Registration Request"}`, "dmvpn_dataplane_packets_total{direction=\"tx\"}", "dmvpn_up 1"} {
			if !strings.Contains(body, want) {
				t.Errorf("spoke1 metrics lack %q", want)
			}
		}
	})

	t.Run("stop", func(t *testing.T) { testLabStop(t, l) })

	out, err = l.run(t, "down")
	if err != nil || !strings.Contains(out, "Lab down: 4 dmvpnd stopped, 10 namespaces removed") {
		t.Errorf("down: %v\n%s", err, out)
	}
	assertNothingLeft(t, l)
	if out, err := l.run(t, "down"); err != nil || !strings.Contains(out, "No lab is up.") {
		t.Errorf("second down: %v\n%s", err, out)
	}
}

// assertNothingLeft checks that no namespace, process or file of the lab
// remains.
func assertNothingLeft(t *testing.T, l *labEnv) {
	t.Helper()
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), l.prefix+"-") {
			t.Errorf("namespace %s left behind", e.Name())
		}
	}
	if _, err := os.Stat(l.dir); !os.IsNotExist(err) {
		t.Errorf("lab directory %s left behind: %v", l.dir, err)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte(l.dir)) {
			continue
		}
		stat, _ := os.ReadFile(filepath.Join(filepath.Dir(p), "stat"))
		if f := strings.Fields(string(stat)); len(f) > 2 && f[2] == "Z" {
			continue // exited; its parent (init) reaps it
		}
		t.Errorf("process left behind: %s", bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
	}
}

// testLabReload sends SIGHUP to spoke2's dmvpnd after breaking its file:
// the daemon refuses it and keeps running as before; a valid edit then
// applies and the log says what changed.
func testLabReload(t *testing.T, l *labEnv) {
	st, err := loadState(l)
	if err != nil {
		t.Fatal(err)
	}
	var d *lab.DaemonState
	for _, n := range st.Nodes {
		if n.Name == "spoke2" {
			d = n.Daemon
		}
	}
	if d == nil {
		t.Fatal("no spoke2 daemon in the lab state")
	}
	orig, err := os.ReadFile(d.Config)
	if err != nil {
		t.Fatal(err)
	}
	before := l.ctl(t, "spoke2", "show", "running-config", "json")
	nhsBefore := l.ctl(t, "spoke2", "show", "ip", "nhrp", "nhs")
	broken := strings.Replace(string(orig), "holding_time: 300", "holding_time: 200\n  mtu: 12\n  bogus: 1", 1)
	if err := os.WriteFile(d.Config, []byte(broken), 0o644); err != nil {
		t.Fatal(err)
	}
	hup := func(want string) string {
		t.Helper()
		if err := syscall.Kill(d.Pid, syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			b, _ := os.ReadFile(d.Log)
			if strings.Count(string(b), want) > 0 {
				return string(b)
			}
			if time.Now().After(deadline) {
				t.Fatalf("log lacks %q:\n%s", want, b)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	logText := hup("configuration reload refused")
	for _, want := range []string{"tunnel.mtu: 12 out of range 576-65507", `tunnel.bogus: unknown key \"bogus\"`} {
		if !strings.Contains(logText, want) {
			t.Errorf("refusal lacks %q:\n%s", want, logText)
		}
	}
	if after := l.ctl(t, "spoke2", "show", "running-config", "json"); after != before {
		t.Errorf("running config changed by an invalid file:\n%s\n→\n%s", before, after)
	}
	if nhsAfter := l.ctl(t, "spoke2", "show", "ip", "nhrp", "nhs"); nhsAfter != nhsBefore {
		t.Errorf("NHS state changed by an invalid file:\n%s\n→\n%s", nhsBefore, nhsAfter)
	}
	valid := strings.Replace(string(orig), "holding_time: 300", "holding_time: 200", 1)
	if err := os.WriteFile(d.Config, []byte(valid), 0o644); err != nil {
		t.Fatal(err)
	}
	logText = hup("configuration reloaded")
	if !strings.Contains(logText, "holding time 5m0s → 3m20s") {
		t.Errorf("the log does not say what changed:\n%s", logText)
	}
	if rc := l.ctl(t, "spoke2", "show", "running-config"); !strings.Contains(rc, "holding_time: 200") {
		t.Errorf("running config after a valid reload:\n%s", rc)
	}
}

func loadState(l *labEnv) (*lab.State, error) {
	b, err := os.ReadFile(filepath.Join(l.dir, "state.json"))
	if err != nil {
		return nil, err
	}
	var s lab.State
	return &s, json.Unmarshal(b, &s)
}

// metricsIn fetches /metrics from 127.0.0.1:9474 inside a namespace: the
// connection's socket is created on a thread moved into it.
func metricsIn(t *testing.T, ns string) string {
	t.Helper()
	conn := make(chan net.Conn, 1)
	errc := make(chan error, 1)
	go func() {
		// The socket is created on this thread while it is in the lab
		// node's namespace; the thread then returns to its own namespace
		// (if it cannot, it stays locked and the runtime ends it).
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer self.Close()
		f, err := os.Open("/run/netns/" + ns)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		c, err := net.DialTimeout("tcp", "127.0.0.1:9474", 2*time.Second)
		if unix.Setns(int(self.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		if err != nil {
			errc <- err
			return
		}
		conn <- c
	}()
	var c net.Conn
	select {
	case c = <-conn:
	case err := <-errc:
		t.Fatalf("connecting to the metrics in %s: %v", ns, err)
	}
	defer c.Close()
	req, _ := http.NewRequest("GET", "http://127.0.0.1:9474/metrics", nil)
	if err := req.Write(c); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("metrics: %s\n%s", resp.Status, b.String())
	}
	return b.String()
}

// testLabStop stops spoke3's dmvpnd with SIGTERM: it purges its
// registrations at both hubs (which drop it at once rather than when its
// holding time runs out) and removes the kernel state it created.
func testLabStop(t *testing.T, l *labEnv) {
	st, err := loadState(l)
	if err != nil {
		t.Fatal(err)
	}
	var d *lab.DaemonState
	ns := ""
	for _, n := range st.Nodes {
		if n.Name == "spoke3" {
			d, ns = n.Daemon, n.NS
		}
	}
	if d == nil {
		t.Fatal("no spoke3 daemon in the lab state")
	}
	if !strings.Contains(l.ctl(t, "hub1", "show", "ip", "nhrp"), "172.16.3.1/32 via 172.16.3.1") {
		t.Fatal("hub1 has no registration of spoke3 to begin with")
	}
	if err := syscall.Kill(d.Pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(d.Log)
		if strings.Contains(string(b), "dmvpnd stopped") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("spoke3 did not stop cleanly:\n%s", b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, hub := range []string{"hub1", "hub2"} {
		deadline := time.Now().Add(5 * time.Second)
		for strings.Contains(l.ctl(t, hub, "show", "ip", "nhrp"), "172.16.3.1/32") {
			if time.Now().After(deadline) {
				t.Errorf("%s still has spoke3's registration after its purge", hub)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if out, err := exec.Command("ip", "-n", ns, "link", "show", "gre1").CombinedOutput(); err == nil {
		t.Errorf("spoke3's tunnel interface is still there:\n%s", out)
	}
	if out, _ := exec.Command("ip", "-n", ns, "rule").CombinedOutput(); strings.Contains(string(out), "lookup 42") {
		t.Errorf("spoke3's shortcut rule is still there:\n%s", out)
	}
	if _, err := os.Stat(d.Socket); !os.IsNotExist(err) {
		t.Errorf("spoke3's control socket is still there: %v", err)
	}
}
