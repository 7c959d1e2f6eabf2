package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/opendmvpn/dmvpn/lab/testbed"
)

// FRR's bgpd and zebra (Debian's FRR 8.4) as the reference hub, in the
// hub's namespace: their own path space (-N, the namespace's name), no TCP
// vty (-P 0). The spokes are dynamic neighbours of one peer group (bgp
// listen range over the spokes' tunnel addresses, remote-as external: each
// spoke in its own AS), as FRR's DMVPN recipes configure a hub; their
// prefixes pass a prefix list (FRR has no per-spoke filter built from a
// certificate), up to as many as our hub allows; toward the spokes it announces the summary only
// (aggregate-address summary-only: phase 3, as our hub). No graceful
// restart, the same timers as ours.

const frrDir = "/usr/lib/frr"

// frrHub is zebra and bgpd running in a node.
type frrHub struct {
	node  *testbed.Node
	dir   string
	etc   string
	zebra *testbed.Proc
	bgpd  *testbed.Proc
}

// frrAvailable says why FRR's bgpd cannot run here, or "".
func frrAvailable() string {
	for _, d := range []string{"zebra", "bgpd"} {
		if _, err := os.Stat(filepath.Join(frrDir, d)); err != nil {
			return "FRR's " + d + " is not installed (scripts/install-deps.sh installs frr)"
		}
	}
	if _, err := user.Lookup("frr"); err != nil {
		return "no frr user (is FRR installed?)"
	}
	return ""
}

func (f *frrHub) bgpdConf(n int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "hostname benchhub\nlog file %s/bgpd.log\n", f.dir)
	fmt.Fprintf(&b, "ip prefix-list SPOKENETS seq 5 permit 10.0.0.0/8 ge 8 le 26\nip prefix-list SPOKENETS seq 10 permit %s le 26\n", bulkNet)
	fmt.Fprintf(&b, "router bgp %d\n bgp router-id %s\n no bgp ebgp-requires-policy\n no bgp default ipv4-unicast\n", 65000, hubTunnel.Addr())
	fmt.Fprintf(&b, " bgp listen limit %d\n neighbor SPOKES peer-group\n neighbor SPOKES remote-as external\n neighbor SPOKES timers 30 90\n", n+100)
	fmt.Fprintf(&b, " bgp listen range 172.16.128.0/17 peer-group SPOKES\n")
	fmt.Fprintf(&b, " address-family ipv4 unicast\n  aggregate-address %s summary-only\n  neighbor SPOKES activate\n  neighbor SPOKES prefix-list SPOKENETS in\n  neighbor SPOKES maximum-prefix %d\n exit-address-family\n",
		summary, maxBulk)
	return b.String()
}

// startFRR writes the configuration and starts zebra then bgpd, waiting
// until bgpd listens.
func startFRR(ctx context.Context, node *testbed.Node, n int) (*frrHub, error) {
	f := &frrHub{node: node, dir: filepath.Join("/run/frr", node.NS), etc: filepath.Join("/etc/frr", node.NS)}
	u, err := user.Lookup("frr")
	if err != nil {
		return nil, err
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	for _, d := range []string{f.dir, f.etc} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := os.Chown(f.dir, uid, gid); err != nil {
		return nil, err
	}
	files := map[string]string{
		filepath.Join(f.etc, "vtysh.conf"): "",
		filepath.Join(f.dir, "zebra.conf"): fmt.Sprintf("hostname benchhub\nlog file %s/zebra.log\n", f.dir),
		filepath.Join(f.dir, "bgpd.conf"):  f.bgpdConf(n),
		filepath.Join(f.dir, "zebra.log"):  "",
		filepath.Join(f.dir, "bgpd.log"):   "",
	}
	for p, content := range files {
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return nil, err
		}
		if err := os.Chown(p, uid, gid); err != nil {
			return nil, err
		}
	}
	start := func(daemon string) (*testbed.Proc, error) {
		return node.Start(testbed.ProcSpec{Name: "frr-" + daemon, Args: []string{
			filepath.Join(frrDir, daemon), "-N", node.NS, "-P", "0",
			"-f", filepath.Join(f.dir, daemon+".conf"), "-i", filepath.Join(f.dir, daemon+".pid"),
		}})
	}
	if f.zebra, err = start("zebra"); err != nil {
		return nil, err
	}
	if err := waitUntil(ctx, 20*time.Second, func() bool { _, err := os.Stat(filepath.Join(f.dir, "zserv.api")); return err == nil }); err != nil {
		f.stop()
		return nil, fmt.Errorf("zebra's socket: %w\n%s", err, f.zebra.Output())
	}
	if f.bgpd, err = start("bgpd"); err != nil {
		f.stop()
		return nil, err
	}
	if err := waitUntil(ctx, 20*time.Second, func() bool {
		out, _ := exec.Command("ip", "netns", "exec", node.NS, "ss", "-Hltn", "sport", "=", ":179").Output()
		return strings.TrimSpace(string(out)) != ""
	}); err != nil {
		f.stop()
		return nil, fmt.Errorf("bgpd does not listen: %w\n%s", err, f.bgpd.Output())
	}
	return f, nil
}

// rss is the resident memory of bgpd and zebra together.
func (f *frrHub) rss() int64 {
	return testbed.RSS(f.zebra.Pid()) + testbed.RSS(f.bgpd.Pid())
}

// diag is FRR's view, for an error: its summary, routes and log.
func (f *frrHub) diag() string {
	out, _ := exec.Command("ip", "netns", "exec", f.node.NS, "vtysh", "-N", f.node.NS,
		"-c", "show bgp summary", "-c", "show ip bgp", "-c", "show ip route").CombinedOutput()
	b, _ := os.ReadFile(filepath.Join(f.dir, "bgpd.log"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return fmt.Sprintf("FRR:\n%s\nbgpd.log:\n%s", out, b)
}

// stop ends bgpd then zebra and removes their files.
func (f *frrHub) stop() {
	for _, p := range []*testbed.Proc{f.bgpd, f.zebra} {
		if p != nil {
			p.Stop()
		}
	}
	os.RemoveAll(f.dir)
	os.RemoveAll(f.etc)
}

// waitUntil polls cond every 20 ms until it holds or timeout passes.
func waitUntil(ctx context.Context, timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v", timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}
