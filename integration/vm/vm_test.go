package vm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// The VM tests of this package boot 5 VMs (two of them at once); each logs
// its boot and run times.

const guestPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

func logTimes(t *testing.T, what string, res *Result) {
	t.Helper()
	if res != nil {
		t.Logf("%s: qemu start → command %v, qemu start → exit %v", what,
			res.Boot.Round(time.Millisecond), res.Elapsed.Round(time.Millisecond))
	}
}

// TestRun boots once and checks what a command sees and what comes back:
// the kernel version, the working directory, exactly the environment given,
// a writable but throw-away root, writable /run and /tmp, `ip netns`, a
// binary built on the host (GoBuild), and a non-zero exit status.
func TestRun(t *testing.T) {
	img := Require(t)
	dir := t.TempDir()
	probe := GoBuild(t, "./integration/vm/testdata/guestprobe")
	script := `
uname -r
pwd
"$PROBE_BIN" one "two words"
printf '%s|%s\n' "$PROBE" "${HOME-unset}"
echo guest > written-in-guest
touch /etc/dmvpn-vm-probe /run/probe /tmp/probe && echo writable
ip netns add probe && ip netns list
echo "to stderr" >&2
exit 3`
	res, err := img.Run(t.Context(), Config{
		Dir:     dir,
		Env:     []string{guestPath, "PROBE=it's a \"value\"", "PROBE_BIN=" + probe},
		Timeout: 90 * time.Second,
	}, "sh", "-c", script)
	logTimes(t, "uname", res)
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 3 {
		t.Errorf("exit status %d, want 3", res.ExitCode)
	}
	want := strings.Join([]string{
		img.Kernel.Version,
		dir,
		`guestprobe ["one" "two words"] on ` + img.Kernel.Version,
		`it's a "value"|unset`,
		"writable",
		"probe",
		"to stderr",
	}, "\n") + "\n"
	if diff := cmp.Diff(want, string(res.Output)); diff != "" {
		t.Errorf("guest output (-want +got):\n%s", diff)
	}
	// the host root is read-only for the guest: its writes stay in the VM
	for _, p := range []string{filepath.Join(dir, "written-in-guest"), "/etc/dmvpn-vm-probe"} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("the guest's write reached the host: %s (%v)", p, err)
		}
	}
	if !bytes.Contains(res.Console, []byte(markerStart)) || res.Boot <= 0 || res.Boot > res.Elapsed {
		t.Errorf("boot time %v of %v not measured; console:\n%s", res.Boot, res.Elapsed, res.Console)
	}
}

// TestTimeout checks that a command outliving its timeout is killed with
// its VM, the error says so and the output so far comes back.
func TestTimeout(t *testing.T) {
	img := Require(t)
	const timeout = 8 * time.Second
	res, err := img.Run(t.Context(), Config{Env: []string{guestPath}, Timeout: timeout},
		"sh", "-c", "echo started; exec sleep 600")
	logTimes(t, "timeout", res)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("Run error %v, want ErrTimeout", err)
	}
	if res.Elapsed > timeout+6*time.Second {
		t.Errorf("Run returned %v after the start, timeout %v", res.Elapsed, timeout)
	}
	// the command ran (unless the boot itself took nearly all the time)
	if res.Boot > 0 && res.Boot < timeout-2*time.Second && string(res.Output) != "started\n" {
		t.Errorf("output so far %q, want \"started\\n\"", res.Output)
	}
	checkNoChildQEMU(t)
}

// checkNoChildQEMU fails t if a QEMU started by this process still exists
// (also as a zombie).
func checkNoChildQEMU(t *testing.T) {
	t.Helper()
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// pid (comm) state ppid …
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 || !strings.Contains(s[:i], "(qemu-system") {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(os.Getpid()) {
			t.Errorf("qemu still there after Run returned: %s", s)
		}
	}
}

// TestGREAndESP proves the kernel data plane in the guest, from Go code run
// there through RunTest: a multipoint GRE device (key, no remote) in two
// namespaces joined by a veth, neighbour entries with 4-byte (NBMA) link
// addresses, a ping across it, then the same ping carried by ESP transport
// SAs with `proto gre` policies.
func TestGREAndESP(t *testing.T) {
	if !InGuest() {
		res := RunTest(t.Context(), t, Require(t), Config{Timeout: 2 * time.Minute})
		logTimes(t, "gre+esp", res)
		return
	}
	for _, m := range []string{"ip_gre", "esp4", "xfrm_user", "veth"} {
		cmdOK(t, "modprobe", m)
	}
	cmdOK(t, "ip", "netns", "add", "a")
	cmdOK(t, "ip", "netns", "add", "b")
	cmdOK(t, "ip", "link", "add", "va", "netns", "a", "type", "veth", "peer", "name", "vb", "netns", "b")
	nodes := []struct{ ns, veth, nbma, peerNBMA, tun, peerTun string }{
		{"a", "va", "192.0.2.1", "192.0.2.2", "10.0.0.1", "10.0.0.2"},
		{"b", "vb", "192.0.2.2", "192.0.2.1", "10.0.0.2", "10.0.0.1"},
	}
	for _, n := range nodes {
		cmdOK(t, "ip", "-n", n.ns, "link", "set", "lo", "up")
		cmdOK(t, "ip", "-n", n.ns, "addr", "add", n.nbma+"/24", "dev", n.veth)
		cmdOK(t, "ip", "-n", n.ns, "link", "set", n.veth, "up")
		cmdOK(t, "ip", "-n", n.ns, "link", "add", "gre1", "type", "gre", "key", "42", "ttl", "64", "local", n.nbma)
		cmdOK(t, "ip", "-n", n.ns, "addr", "add", n.tun+"/24", "dev", "gre1")
		cmdOK(t, "ip", "-n", n.ns, "link", "set", "gre1", "up")
		cmdOK(t, "ip", "-n", n.ns, "neigh", "add", n.peerTun, "lladdr", n.peerNBMA, "dev", "gre1")
	}

	var links []struct {
		Broadcast string `json:"broadcast"`
		LinkInfo  struct {
			Kind string `json:"info_kind"`
			Data struct {
				Remote string `json:"remote"`
				IKey   string `json:"ikey"`
			} `json:"info_data"`
		} `json:"linkinfo"`
	}
	jsonOK(t, &links, "ip", "-j", "-d", "-n", "a", "link", "show", "gre1")
	if len(links) != 1 || links[0].LinkInfo.Kind != "gre" || links[0].Broadcast != "0.0.0.0" ||
		(links[0].LinkInfo.Data.Remote != "" && links[0].LinkInfo.Data.Remote != "any") {
		t.Fatalf("gre1 is not a multipoint GRE device: %+v", links)
	}
	var neigh []struct {
		Dst    string `json:"dst"`
		LLAddr string `json:"lladdr"`
	}
	jsonOK(t, &neigh, "ip", "-j", "-n", "a", "neigh", "show", "dev", "gre1")
	if diff := cmp.Diff(`[{10.0.0.2 192.0.2.2}]`, fmt.Sprint(neigh)); diff != "" {
		t.Fatalf("neighbours of gre1 (-want +got):\n%s", diff)
	}

	before := greCounters(t)
	cmdOK(t, "ip", "netns", "exec", "a", "ping", "-c", "3", "-i", "0.2", "-W", "2", "10.0.0.2")
	if after := greCounters(t); after[0]-before[0] < 3 || after[1]-before[1] < 3 {
		t.Fatalf("gre1 counters tx/rx %v → %v: the ping did not cross the GRE device", before, after)
	}

	// ESP transport mode between the NBMA addresses, for GRE only
	keys := map[string]string{
		"192.0.2.1": "0x0102030405060708090a0b0c0d0e0f1011121314",
		"192.0.2.2": "0x1112131415161718191a1b1c1d1e1f2021222324",
	}
	spis := map[string]string{"192.0.2.1": "0x1000", "192.0.2.2": "0x2000"}
	for _, n := range nodes {
		for _, src := range []string{n.nbma, n.peerNBMA} {
			dst := map[string]string{"192.0.2.1": "192.0.2.2", "192.0.2.2": "192.0.2.1"}[src]
			cmdOK(t, "ip", "-n", n.ns, "xfrm", "state", "add", "src", src, "dst", dst, "proto", "esp",
				"spi", spis[src], "reqid", "1", "mode", "transport", "aead", "rfc4106(gcm(aes))", keys[src], "128")
		}
		for dir, ends := range map[string][2]string{"out": {n.nbma, n.peerNBMA}, "in": {n.peerNBMA, n.nbma}} {
			cmdOK(t, "ip", "-n", n.ns, "xfrm", "policy", "add", "src", ends[0], "dst", ends[1], "proto", "gre",
				"dir", dir, "tmpl", "proto", "esp", "reqid", "1", "mode", "transport")
		}
	}
	cmdOK(t, "ip", "netns", "exec", "a", "ping", "-c", "3", "-i", "0.2", "-W", "2", "10.0.0.2")
	state := cmdOK(t, "ip", "-s", "-n", "a", "xfrm", "state")
	packets := regexp.MustCompile(`(?m)^\s*(\d+)\(bytes\), (\d+)\(packets\)`).FindAllStringSubmatch(state, -1)
	if len(packets) != 2 {
		t.Fatalf("want counters of 2 SAs:\n%s", state)
	}
	for _, p := range packets {
		if n, _ := strconv.Atoi(p[2]); n < 3 {
			t.Errorf("an SA carried %s packets, want ≥ 3:\n%s", p[2], state)
		}
	}
}

// greCounters returns gre1's tx and rx packet counters in namespace a.
func greCounters(t *testing.T) [2]uint64 {
	t.Helper()
	var links []struct {
		Stats struct {
			RX struct {
				Packets uint64 `json:"packets"`
			} `json:"rx"`
			TX struct {
				Packets uint64 `json:"packets"`
			} `json:"tx"`
		} `json:"stats64"`
	}
	jsonOK(t, &links, "ip", "-j", "-s", "-n", "a", "link", "show", "gre1")
	if len(links) != 1 {
		t.Fatalf("gre1 not found")
	}
	return [2]uint64{links[0].Stats.TX.Packets, links[0].Stats.RX.Packets}
}

// cmdOK runs a command and fails t if it fails; it returns the output.
func cmdOK(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func jsonOK(t *testing.T, v any, name string, args ...string) {
	t.Helper()
	out := cmdOK(t, name, args...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// TestTAPTwoVMs runs two VMs at once, each with a NIC on a TAP bridged in
// a host namespace: each VM pings the host and the other VM, the host pings
// both, and each guest sees the distinct MAC it was given.
func TestTAPTwoVMs(t *testing.T) {
	img := Require(t)
	ctx := t.Context()
	suffix := fmt.Sprintf("%d", os.Getpid()%100000)
	ns := "dmvpnvm-" + suffix
	if err := ip(ctx, "", "netns", "add", ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ip(context.Background(), "", "netns", "del", ns); err != nil {
			t.Error(err)
		}
	})
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "br0", "type", "bridge"},
		{"addr", "add", "198.51.100.1/24", "dev", "br0"},
		{"link", "set", "br0", "up"},
	} {
		if err := ip(ctx, ns, args...); err != nil {
			t.Fatal(err)
		}
	}
	share := t.TempDir()
	vms := []struct{ tap, addr, peer string }{
		{"vmt" + suffix + "a", "198.51.100.2", "198.51.100.3"},
		{"vmt" + suffix + "b", "198.51.100.3", "198.51.100.2"},
	}
	for _, v := range vms {
		if err := AddTAP(ctx, ns, v.tap); err != nil {
			t.Fatal(err)
		}
		if err := ip(ctx, ns, "link", "set", v.tap, "master", "br0"); err != nil {
			t.Fatal(err)
		}
	}
	// Each guest: ping the host, ping the other VM, say so, then stay up
	// until the other VM and the host have pinged it too.
	const script = `
ip link set eth0 up && ip addr add "$ME/24" dev eth0 || exit 1
cat /sys/class/net/eth0/address
retry() { n=0; until "$@" >/dev/null 2>&1; do n=$((n+1)); [ $n -lt 150 ] || { echo "failed: $*"; exit 1; }; sleep 0.2; done; }
retry ping -c 1 -W 1 198.51.100.1 && echo "pinged host"
retry ping -c 1 -W 1 "$PEER" && echo "pinged peer"
touch "$SHARE/$ME-pinged-$PEER"
retry test -e "$SHARE/$PEER-pinged-$ME"
retry test -e "$SHARE/host-pinged-$ME"
echo done`
	type run struct {
		res        *Result
		err        error
		start, end time.Time
	}
	// Both VMs run at once: take two VM slots together.
	release, err := Reserve(ctx, len(vms))
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	runs := make([]run, len(vms))
	var wg sync.WaitGroup
	for i, v := range vms {
		wg.Go(func() {
			runs[i].start = time.Now()
			runs[i].res, runs[i].err = img.Run(ctx, Config{
				Env:      []string{guestPath, "ME=" + v.addr, "PEER=" + v.peer, "SHARE=" + share},
				Timeout:  2 * time.Minute,
				Hostname: "vm" + string(rune('a'+i)),
				NetNS:    ns,
				NICs:     []NIC{{TAP: v.tap}},
				Shares:   []string{share},
				Reserved: true,
			}, "sh", "-c", script)
			runs[i].end = time.Now()
		})
	}
	// the host pings each guest once it answers, then tells it
	hostErrs := make([]error, len(vms))
	for i, v := range vms {
		wg.Go(func() {
			deadline := time.Now().Add(90 * time.Second)
			for {
				err := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", v.addr).Run()
				if err == nil {
					hostErrs[i] = os.WriteFile(filepath.Join(share, "host-pinged-"+v.addr), nil, 0o644)
					return
				}
				if time.Now().After(deadline) || ctx.Err() != nil {
					hostErrs[i] = fmt.Errorf("host → %s: no reply: %w", v.addr, err)
					return
				}
				time.Sleep(200 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	for i, r := range runs {
		logTimes(t, "vm "+vms[i].addr, r.res)
		if hostErrs[i] != nil {
			t.Error(hostErrs[i])
		}
		if r.err != nil {
			t.Errorf("VM %s: %v", vms[i].addr, r.err)
			continue
		}
		want := fmt.Sprintf("%s\npinged host\npinged peer\ndone\n", r.res.MACs[0])
		if r.res.ExitCode != 0 || string(r.res.Output) != want {
			t.Errorf("VM %s: exit status %d, output:\n%s\nwant:\n%s", vms[i].addr, r.res.ExitCode, r.res.Output, want)
		}
	}
	if t.Failed() {
		return
	}
	if runs[0].res.MACs[0].String() == runs[1].res.MACs[0].String() {
		t.Errorf("both VMs got MAC %s", runs[0].res.MACs[0])
	}
	if !runs[0].start.Before(runs[1].end) || !runs[1].start.Before(runs[0].end) {
		t.Errorf("the VMs did not run at the same time: %v–%v and %v–%v", runs[0].start, runs[0].end, runs[1].start, runs[1].end)
	}
	checkNoChildQEMU(t)
}

// BenchmarkBoot measures a whole VM run of `true`, and reports the part
// from QEMU's start to the command's start as boot-ms.
func BenchmarkBoot(b *testing.B) {
	img := Require(b)
	var boot time.Duration
	for b.Loop() {
		res, err := img.Run(b.Context(), Config{}, "true")
		if err != nil {
			b.Fatal(err)
		}
		if res.ExitCode != 0 {
			b.Fatalf("true exited with %d", res.ExitCode)
		}
		boot += res.Boot
	}
	b.ReportMetric(float64(boot.Milliseconds())/float64(b.N), "boot-ms")
}
