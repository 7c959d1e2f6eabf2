package integration

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/bgp"
	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/lab/testbed"
)

// TestFRRBGPSpoke puts FRR's bgpd and zebra (Debian's FRR 8.4) on a spoke
// of our hub, in namespaces on this machine: FRR's nhrpd needs ip_gre,
// bgpd does not — on the spoke fs dmvpnd runs NHRP and the tunnel alone
// (the userspace data plane, no bgp section) and FRR does the routing over
// dmvpnd's tunnel interface, as the Alpine guide's spokes ran Quagga's
// bgpd beside OpenNHRP. Our hub (userspace, phase 3) and our spoke s2 run
// BGP in dmvpnd. The hub makes FRR a neighbour in the AS its
// configuration gives the spoke and takes its LAN (10.21.0.0/24) into the
// kernel with our protocol, refuses the prefix FRR announces outside the
// spoke's networks; zebra installs the hub's summary on the tunnel; the
// LANs of FRR's spoke and ours reach each other, through the hub then
// over the shortcut NHRP builds.
func TestFRRBGPSpoke(t *testing.T) {
	requireTestbed(t)
	requireFRRBGP(t)
	t.Parallel()
	t.Logf("FRR: %s", frrVersion())
	bin := buildDmvpnd(t)
	tb, err := testbed.New(context.Background(), testbed.Spec{Sites: []testbed.Site{
		{Name: "hub", Kind: testbed.Hub, NBMA: netip.MustParsePrefix("192.0.2.1/24")},
		{Name: "fs", Kind: testbed.Spoke, NBMA: netip.MustParsePrefix("198.51.100.1/26"), LAN: netip.MustParsePrefix("10.21.0.1/24"), Hosts: 1},
		{Name: "s2", Kind: testbed.Spoke, NBMA: netip.MustParsePrefix("198.51.100.65/26"), LAN: netip.MustParsePrefix("10.22.0.1/24"), Hosts: 1},
	}}, testbed.WithLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tb.Close() })

	const timers = "  keepalive: 1s\n  hold_time: 3s\n  connect_retry: 1s\n"
	hub := startDaemon(t, bin, tb.Node("hub"), frrBGPNodeYAML("hub", "172.16.0.1", "",
		"  redirect: true\n  multicast: dynamic\npolicy:\n  allow: all\n",
		"bgp:\n  summary: [10.0.0.0/8]\n  spokes:\n"+
			"    - address: 172.16.1.1\n      as: 65021\n      networks: [10.21.0.0/24]\n"+
			"    - address: 172.16.2.1\n      as: 65022\n      networks: [10.22.0.0/24]\n"+timers))
	fs := startDaemon(t, bin, tb.Node("fs"), frrBGPNodeYAML("fs", "172.16.1.1", "10.21.0.0/24", "", ""))
	s2 := startDaemon(t, bin, tb.Node("s2"), frrBGPNodeYAML("s2", "172.16.2.1", "10.22.0.0/24", "", "bgp:\n  as: 65022\n"+timers))
	startFRRBGP(t, tb.Node("fs"), `router bgp 65021
 bgp router-id 172.16.1.1
 no bgp ebgp-requires-policy
 no bgp network import-check
 neighbor 172.16.0.1 remote-as 65000
 neighbor 172.16.0.1 update-source 172.16.1.1
 neighbor 172.16.0.1 timers 1 3
 neighbor 172.16.0.1 timers connect 1
 address-family ipv4 unicast
  network 10.21.0.0/24
  network 10.99.0.0/24
 exit-address-family
`)

	// The hub: FRR in the spoke's AS, established; its LAN in the kernel
	// with our protocol through it; 10.99.0.0/24, outside the networks the
	// spoke may announce, refused and kept out of the kernel (as is the
	// hub's own summary, which FRR announces back).
	fsAddr := netip.MustParseAddr("172.16.1.1")
	waitFor(t, 30*time.Second, "the hub's BGP session with FRR's spoke", func() bool {
		n, ok := bgpNeighbor(t, hub, fsAddr)
		return ok && n.State == bgp.StateEstablished && n.AS == 65021 && n.Refused >= 1
	})
	hubNS := tb.Node("hub").NS
	waitFor(t, 15*time.Second, "FRR's LAN in the hub's kernel with our protocol", func() bool {
		return slices.ContainsFunc(bgpRoutes(t, hubNS), func(r string) bool { return strings.HasPrefix(r, "10.21.0.0/24 via 172.16.1.1 dev gre1") })
	})
	if rs := bgpRoutes(t, hubNS); slices.ContainsFunc(rs, func(r string) bool { return strings.HasPrefix(r, "10.99.0.0/24") }) {
		t.Errorf("the refused prefix is in the hub's kernel: %q", rs)
	}
	var recv []bgp.Route
	hub.get(control.PathBGPRoutes+"?table=received&neighbor=172.16.1.1", &recv)
	if !slices.ContainsFunc(recv, func(r bgp.Route) bool { return r.Prefix.String() == "10.99.0.0/24" && r.Refused && r.Why != "" }) {
		t.Errorf("FRR's received routes at the hub do not show 10.99.0.0/24 refused: %s", jsonString(recv))
	}

	// FRR's spoke: zebra installs the hub's summary on the tunnel (the
	// specific routes stay at the hub: phase 3).
	fsNS := tb.Node("fs").NS
	waitFor(t, 15*time.Second, "the hub's summary in FRR's spoke's kernel", func() bool {
		// zebra's route uses a nexthop object: 10.0.0.0/8 nhid N via …
		return slices.ContainsFunc(bgpRoutes(t, fsNS), func(r string) bool {
			return strings.HasPrefix(r, "10.0.0.0/8 ") && strings.Contains(r, " via 172.16.0.1 dev gre1 ")
		})
	})
	if rs := bgpRoutes(t, fsNS); slices.ContainsFunc(rs, func(r string) bool { return strings.HasPrefix(r, "10.22.0.0/24") }) {
		t.Errorf("FRR's spoke has s2's specific route: %q (phase 3 announces the summary only)", rs)
	}
	waitFor(t, 15*time.Second, "s2's LAN at the hub and the summary at s2", func() bool {
		return slices.ContainsFunc(bgpRoutes(t, hubNS), func(r string) bool { return strings.HasPrefix(r, "10.22.0.0/24 via 172.16.2.1") }) &&
			slices.ContainsFunc(bgpRoutes(t, tb.Node("s2").NS), func(r string) bool { return strings.HasPrefix(r, "10.0.0.0/8 via 172.16.0.1") })
	})

	// LAN to LAN both ways, through the hub until NHRP's shortcut (the
	// hub's redirect, dmvpnd's resolution on both spokes) takes over.
	fsHost, s2Host := tb.Node("fs-h1"), tb.Node("s2-h1")
	waitFor(t, 30*time.Second, "FRR's spoke's LAN and s2's to reach each other over a shortcut", func() bool {
		if _, err := pingTTL(t, fsHost, netip.MustParseAddr("10.22.0.2")); err != nil {
			return false
		}
		ttl, err := pingTTL(t, s2Host, netip.MustParseAddr("10.21.0.2"))
		_, fsCut := fs.entry(netip.MustParsePrefix("10.22.0.0/24"))
		_, s2Cut := s2.entry(netip.MustParsePrefix("10.21.0.0/24"))
		return err == nil && ttl == 62 && fsCut && s2Cut
	})
}

// frrBGPNodeYAML is a node's dmvpnd configuration in TestFRRBGPSpoke: the
// userspace data plane, no IPsec, a spoke registered with the hub by its
// NBMA address; extra goes in the tunnel section (hub), bgp is the bgp
// section ("" for FRR's spoke: FRR does its BGP).
func frrBGPNodeYAML(name, tunnel, lan, extra, bgpSection string) string {
	var b strings.Builder
	role := "spoke"
	if lan == "" {
		role = "hub"
	}
	fmt.Fprintf(&b, "node: %s\nrole: %s\ntunnel:\n  interface: gre1\n  address: %s/16\n  key: 42\n  dataplane: userspace\n  holding_time: 60\n",
		name, role, tunnel)
	if role == "spoke" {
		fmt.Fprintf(&b, "  nhs:\n    - address: 172.16.0.1\n      nbma: 192.0.2.1\n  shortcut: true\nnetworks:\n  - %s\n", lan)
	} else {
		b.WriteString(strings.Replace(extra, "policy:", "  purge_on_shutdown: true\npolicy:", 1))
	}
	b.WriteString(bgpSection)
	b.WriteString("forwarding: true\nlogging:\n  level: debug\nmetrics:\n  enabled: false\ncontrol:\n  socket: \"@SOCKET@\"\nipsec: off\n")
	return b.String()
}

// bgpNeighbor is a neighbour in a node's BGP summary.
func bgpNeighbor(t *testing.T, d *daemonNode, a netip.Addr) (bgp.NeighborStatus, bool) {
	t.Helper()
	var s control.BGPSummary
	d.get(control.PathBGPSummary, &s)
	for _, n := range s.Neighbors {
		if n.Address == a {
			return n, true
		}
	}
	return bgp.NeighborStatus{}, false
}

// requireFRRBGP fails t when FRR's bgpd is missing: make test installs it.
func requireFRRBGP(t *testing.T) {
	t.Helper()
	for _, d := range []string{"zebra", "bgpd"} {
		if _, err := os.Stat(filepath.Join(frrDir, d)); err != nil {
			t.Fatalf("FRR is not installed (%v): make test installs it (apt-get install frr)", err)
		}
	}
}

// startFRRBGP starts zebra and bgpd in a node with bgpd's configuration,
// in their own path space (the node's namespace name), no TCP vty.
func startFRRBGP(t *testing.T, n *testbed.Node, bgpdConf string) {
	t.Helper()
	f := &frrNode{t: t, name: n.Name, node: n, space: n.NS, dir: filepath.Join("/run/frr", n.NS)}
	uid, gid := frrIDs(t)
	etc := filepath.Join("/etc/frr", f.space)
	for _, d := range []string{f.dir, etc} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { os.RemoveAll(f.dir); os.RemoveAll(etc) })
	if err := os.Chown(f.dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(etc, "vtysh.conf"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	f.writeConf("zebra", fmt.Sprintf("hostname %s\nlog file %s/zebra.log\n", n.Name, f.dir))
	f.zebra = f.start("zebra")
	waitFor(t, 20*time.Second, n.Name+": zebra's socket", func() bool {
		_, err := os.Stat(filepath.Join(f.dir, "zserv.api"))
		return err == nil
	})
	f.startBGPD(bgpdConf)
}

// writeConf writes a daemon's configuration and empty log, owned by frr.
func (f *frrNode) writeConf(daemon, conf string) {
	f.t.Helper()
	uid, gid := frrIDs(f.t)
	for p, content := range map[string]string{
		filepath.Join(f.dir, daemon+".conf"): conf,
		filepath.Join(f.dir, daemon+".log"):  "",
	} {
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			f.t.Fatal(err)
		}
		if err := os.Chown(p, uid, gid); err != nil {
			f.t.Fatal(err)
		}
	}
}

// startBGPD starts bgpd beside the node's zebra with its configuration
// (a log file line first); on failure the test logs FRR's BGP view and
// bgpd's log.
func (f *frrNode) startBGPD(conf string) {
	f.t.Helper()
	f.writeConf("bgpd", fmt.Sprintf("hostname %s\nlog file %s/bgpd.log\n", f.name, f.dir)+conf)
	f.start("bgpd")
	f.t.Cleanup(func() {
		if f.t.Failed() {
			out, err := f.vtysh("show bgp summary", "show ip bgp", "show ip route")
			f.t.Logf("%s: FRR's BGP (%v):\n%s", f.name, err, out)
			b, _ := os.ReadFile(filepath.Join(f.dir, "bgpd.log"))
			f.t.Logf("%s: bgpd.log:\n%s", f.name, b)
		}
	})
}
