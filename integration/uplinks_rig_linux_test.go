package integration

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/integration/vm"
	"github.com/opendmvpn/dmvpn/lab/testbed"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// The failover topology: a hub, spoke s1 with two ISPs (wan0 on inet,
// wan1 on inet2) and a LAN host, spoke s2 with a LAN host; IPsec
// (userspace ESP) everywhere, s1 runs its firewall (masquerade and
// connection marks per uplink). 192.0.2.252 on inet's loopback stands for
// a server on the internet.
var (
	foS1ISP1   = netip.MustParseAddr("198.51.100.1")
	foS1ISP2   = netip.MustParseAddr("203.0.113.65")
	foS2NBMA   = netip.MustParseAddr("198.51.100.17")
	foServer   = netip.MustParseAddr("192.0.2.252")
	foS1Tunnel = netip.MustParseAddr("10.0.0.11")
	foS1LAN    = netip.MustParsePrefix("10.1.0.0/24")
)

// failoverRig is the running failover topology.
type failoverRig struct {
	t      testing.TB
	tb     *testbed.Testbed
	hub    *daemonNode
	s1, s2 *daemonNode
	pki    *testPKI
	// s1PKI is the IPsec part of s1's configuration.
	s1PKI string
	// greinject is the greinject command, once built.
	greinject string
	// server counts, on inet's input, what reaches the internet server
	// through each ISP (by the link it comes in on and the masqueraded
	// source address).
	server *nftCounters
	routes *routeWatch
	// shortcuts: the failover waits for s2's shortcut to s1 before the cut
	// and after it (not in the VM, where both spokes' simultaneous IKE under
	// TCG can take longer than the test waits; LAN reachability is checked
	// there instead).
	shortcuts bool
}

// s1YAML is s1's configuration: two uplinks (isp2 standing by unless
// balanced: then both carry new flows, weighted 3:1) and a firewall.
func s1YAML(dataplane string, balanced bool) string {
	if balanced {
		return s1UplinksYAML(dataplane, 3, 1, 0)
	}
	return s1UplinksYAML(dataplane, 1, 1, 1)
}

// s1UplinksYAML is s1's configuration with isp1 weighted w1 and isp2
// weighted w2 at preference pref2; w2 0: without isp2.
func s1UplinksYAML(dataplane string, w1, w2, pref2 int) string {
	probes := "[192.0.2.253, 192.0.2.254, 203.0.113.253]"
	if vm.InGuest() {
		// Under TCG on a loaded 2-core machine a probe's answer can take
		// longer than the default 200 ms: both uplinks flapped down and up
		// together, and the failover never settled. Slower probing there;
		// the default's timings are the namespace tests' and the
		// benchmark's to show.
		probes += "\n    interval: 1s\n    timeout: 900ms"
	}
	y := spokeYAML("s1", dataplane, foS1Tunnel.String(), foS1LAN.String()) + fmt.Sprintf(`uplinks:
  - name: isp1
    interface: wan0
    probes: %s
    weight: %d
    masquerade: true
`, probes, w1)
	if w2 > 0 {
		y += fmt.Sprintf(`  - name: isp2
    interface: wan1
    gateway: 203.0.113.78
    probes: %s
    weight: %d
    preference: %d
    masquerade: true
`, probes, w2, pref2)
	}
	return y + `firewall:
  zones:
    lan: [lan0]
`
}

// newFailoverRig builds the topology and starts the hub and both spokes on
// a data plane (userspace, or kernel with kernel ESP); it returns once
// both are registered.
func newFailoverRig(t testing.TB, dataplane string, balanced bool) *failoverRig {
	t.Helper()
	requireTestbed(t)
	requireCharon(t)
	bin := buildDmvpnd(t)
	spec := testbed.Spec{Sites: []testbed.Site{
		{Name: "hub", Kind: testbed.Hub, NBMA: netip.MustParsePrefix("192.0.2.1/28")},
		{Name: "s1", Kind: testbed.Spoke, NBMA: netip.MustParsePrefix("198.51.100.1/28"), NBMA2: netip.MustParsePrefix("203.0.113.65/28"),
			LAN: netip.MustParsePrefix("10.1.0.1/24"), Hosts: 1},
		{Name: "s2", Kind: testbed.Spoke, NBMA: netip.MustParsePrefix("198.51.100.17/28"), LAN: netip.MustParsePrefix("10.2.0.1/24"), Hosts: 1},
	}}
	var opts []testbed.Option
	if _, bench := t.(*testing.B); !bench {
		opts = append(opts, testbed.WithLogger(t)) // a benchmark prints its log: only its figures
	}
	tb, err := testbed.New(context.Background(), spec, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tb.Close() })
	r := &failoverRig{t: t, tb: tb, pki: newTestPKI(t), shortcuts: !vm.InGuest()}
	if dataplane == "kernel" {
		r.pki.mode = "kernel"
	}
	t.Cleanup(r.pki.dumpLogs)
	if err := tb.Node("inet").IP("addr add " + foServer.String() + "/32 dev lo"); err != nil {
		t.Fatal(err)
	}
	r.server = countAt(t, tb.Node("inet"), "input", "dmvt_server", map[string]string{
		"isp1": fmt.Sprintf(`iifname "to-s1" ip saddr %s ip daddr %s`, foS1ISP1, foServer),
		"isp2": fmt.Sprintf(`iifname "to-inet2" ip saddr %s ip daddr %s`, foS1ISP2, foServer),
	})
	r.hub = startDaemon(t, bin, tb.Node("hub"), hubYAML(dataplane)+
		r.pki.node("hub", "C=FI, O=Example, OU=GRE=10.0.0.1, OU=AS=65000, CN=hub", ""))
	var routes []string
	for i, lan := range []string{"10.1.0.0/24", "10.2.0.0/24"} {
		routes = append(routes, fmt.Sprintf("route add %s via 10.0.0.%d dev gre1 onlink", lan, 11+i))
	}
	if err := tb.Node("hub").IP(routes...); err != nil {
		t.Fatal(err)
	}
	r.routes = watchRoutes(t, tb.Node("s1").NS)
	r.s1PKI = r.pki.node("s1", "C=FI, O=Example, OU=GRE=10.0.0.11, OU=AS=65011, OU=NET=10.1.0.0/24, CN=s1", "")
	r.s1 = startDaemon(t, bin, tb.Node("s1"), s1YAML(dataplane, balanced)+r.s1PKI)
	r.s2 = startDaemon(t, bin, tb.Node("s2"), spokeYAML("s2", dataplane, "10.0.0.12", "10.2.0.0/24")+
		r.pki.node("s2", "C=FI, O=Example, OU=GRE=10.0.0.12, OU=AS=65012, OU=NET=10.2.0.0/24, CN=s2", ""))
	for _, n := range []string{"s1", "s2"} {
		if err := tb.Node(n).IP("route add 10.0.0.0/8 via 10.0.0.1 dev gre1 onlink"); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, slowVM(30*time.Second), "both spokes registered", func() bool {
		return r.registeredAt(foS1Tunnel).IsValid() && r.registeredAt(netip.MustParseAddr("10.0.0.12")).IsValid()
	})
	return r
}

// registeredAt is the NBMA address the hub has a spoke registered at.
func (r *failoverRig) registeredAt(tunnel netip.Addr) netip.Addr {
	e, ok := r.hub.entry(netip.PrefixFrom(tunnel, 32))
	if !ok || e.Type != nhrp.TypeDynamic {
		return netip.Addr{}
	}
	return e.NBMA
}

// uplinks returns s1's uplinks.
func (r *failoverRig) uplinks() control.UplinksResponse {
	var u control.UplinksResponse
	r.s1.get(control.PathUplinks, &u)
	return u
}

// via returns the uplinks carrying s1's default route.
func (r *failoverRig) via() []string {
	var out []string
	for _, u := range r.uplinks().Uplinks {
		if u.Default {
			out = append(out, u.Name)
		}
	}
	return out
}

// shortcutNBMA is the NBMA address of s2's shortcut to s1's LAN.
func (r *failoverRig) shortcutNBMA() netip.Addr {
	e, ok := r.s2.entry(foS1LAN)
	if !ok || e.Type != nhrp.TypeShortcut {
		return netip.Addr{}
	}
	return e.NBMA
}

// cut cuts s1's ISP on its internet router; it returns when the command
// started (the cut is in force from some moment after it).
func (r *failoverRig) cut(isp string, mode testbed.CutMode) time.Time {
	r.t.Helper()
	router := map[string]string{"isp1": "inet", "isp2": "inet2"}[isp]
	start := time.Now()
	if err := testbed.Cut(context.Background(), r.tb.Node(router).NS, "to-s1", mode); err != nil {
		r.t.Fatal(err)
	}
	return start
}

// restore undoes cut.
func (r *failoverRig) restore(isp string) time.Time {
	r.t.Helper()
	router := map[string]string{"isp1": "inet", "isp2": "inet2"}[isp]
	start := time.Now()
	if err := testbed.Restore(context.Background(), r.tb.Node(router).NS, "to-s1"); err != nil {
		r.t.Fatal(err)
	}
	return start
}

// pingEvery starts a continuous ping (every interval) from a node.
func pingEvery(t testing.TB, n *testbed.Node, dst netip.Addr, interval string) *testbed.Proc {
	t.Helper()
	p, err := n.Start(testbed.ProcSpec{Name: "ping-" + dst.String(), Args: []string{"ping", "-n", "-D", "-i", interval, "-W", "1", dst.String()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	return p
}

// routeWatch records the route changes of a namespace as they arrive.
type routeWatch struct {
	mu     sync.Mutex
	events []routeEvent
	done   chan struct{}
}

type routeEvent struct {
	at    time.Time
	table int
	dst   string
	gws   []netip.Addr
	del   bool
}

// watchRoutes subscribes to a namespace's route changes until cleanup.
func watchRoutes(t testing.TB, ns string) *routeWatch {
	t.Helper()
	h, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	w := &routeWatch{done: make(chan struct{})}
	ch := make(chan netlink.RouteUpdate, 1024)
	if err := netlink.RouteSubscribeWithOptions(ch, w.done, netlink.RouteSubscribeOptions{Namespace: &h}); err != nil {
		h.Close()
		t.Fatal(err)
	}
	go func() {
		for u := range ch {
			at := time.Now()
			ev := routeEvent{at: at, table: u.Table, dst: "default", del: u.Type == 25 /* RTM_DELROUTE */}
			if u.Dst != nil && !isZero(u.Dst) {
				ev.dst = u.Dst.String()
			}
			if a, ok := netip.AddrFromSlice(u.Gw); ok {
				ev.gws = append(ev.gws, a.Unmap())
			}
			for _, nh := range u.MultiPath {
				if a, ok := netip.AddrFromSlice(nh.Gw); ok {
					ev.gws = append(ev.gws, a.Unmap())
				}
			}
			w.mu.Lock()
			w.events = append(w.events, ev)
			w.mu.Unlock()
		}
	}()
	t.Cleanup(func() { close(w.done); h.Close() })
	return w
}

func isZero(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}

// mainDefaultVia returns when, after since, the main table's default route
// became one through gw alone.
func (w *routeWatch) mainDefaultVia(since time.Time, gw netip.Addr) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, e := range w.events {
		if e.at.After(since) && e.table == 254 && e.dst == "default" && !e.del && slices.Equal(e.gws, []netip.Addr{gw}) {
			return e.at, true
		}
	}
	return time.Time{}, false
}

// firstPacketFrom returns when the first IPv4 packet from src to dst was
// captured after since, in a capture still being written (-U).
func firstPacketFrom(path string, since time.Time, src, dst netip.Addr) (time.Time, bool) {
	f, err := os.Open(path)
	if err != nil {
		return time.Time{}, false
	}
	defer f.Close()
	rd, err := pcapgo.NewReader(f)
	if err != nil {
		return time.Time{}, false
	}
	for {
		data, ci, err := rd.ReadPacketData()
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				return time.Time{}, false
			}
			return time.Time{}, false
		}
		if !ci.Timestamp.After(since) {
			continue
		}
		p := gopacket.NewPacket(data, rd.LinkType(), gopacket.NoCopy)
		ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		if ip == nil {
			continue
		}
		s, _ := netip.AddrFromSlice(ip.SrcIP)
		d, _ := netip.AddrFromSlice(ip.DstIP)
		if s == src && d == dst {
			return ci.Timestamp, true
		}
	}
}

// failoverTimes are the times from a cut to each step of the failover;
// flowMoved is when the LAN's flow established through isp1 before the
// cut got its first reply through isp2 (its connection, masqueraded to
// isp1's address, deleted: it starts afresh through isp2).
type failoverTimes struct {
	defaultMoved, lanThroughISP2, registered, shortcut time.Duration
	flowMoved                                          time.Duration
}

func (f failoverTimes) String() string {
	sc := "not waited for"
	if f.shortcut > 0 {
		sc = f.shortcut.Round(time.Millisecond).String()
	}
	return fmt.Sprintf("default route moved %v, first LAN packet through isp2 %v, established flow answered through isp2 %v, registered through isp2 %v, shortcut working again %s",
		f.defaultMoved.Round(time.Millisecond), f.lanThroughISP2.Round(time.Millisecond), f.flowMoved.Round(time.Millisecond), f.registered.Round(time.Millisecond), sc)
}

// failover cuts isp1 in the given mode with LAN traffic running (s1's
// host to the internet server, s2's host to s1's host, every 10 ms) and
// measures, from the cut: the main default through isp2 (route event in
// s1), the first LAN packet through isp2 (a capture on inet2), the hub's
// registration of s1 at its isp2 address (the hub's event), and s2's
// shortcut to s1's LAN at that address (s2's event) with a ping over it.
func (r *failoverRig) failover(mode testbed.CutMode) failoverTimes {
	t := r.t
	t.Helper()
	lan := startTcpdump(t, r.tb.Node("inet2"), "tcpdump-lan", "lan.pcap", "to-s1", "icmp and dst host "+foServer.String())
	p1 := pingEvery(t, r.tb.Node("s1-h1"), foServer, "0.01")
	p2 := pingEvery(t, r.tb.Node("s2-h1"), r.tb.Node("s1-h1").Addr, "0.01")
	defer p1.Stop()
	defer p2.Stop()
	before := r.server.value("isp1")
	waitFor(t, slowVM(10*time.Second), "LAN traffic through isp1, its connection masqueraded to isp1's address, and a shortcut from s2 to s1 at its isp1 address", func() bool {
		return r.server.value("isp1") > before+5 && r.natted(foS1ISP1) > 0 && (r.shortcutNBMA() == foS1ISP1 || !r.shortcuts)
	})
	cut := r.cut("isp1", mode)
	var ft failoverTimes
	waitFor(t, slowVM(15*time.Second), "every step of the failover", func() bool {
		if ft.defaultMoved == 0 {
			if at, ok := r.routes.mainDefaultVia(cut, netip.MustParseAddr("203.0.113.78")); ok {
				ft.defaultMoved = at.Sub(cut)
			}
		}
		if ft.lanThroughISP2 == 0 {
			if at, ok := firstPacketFrom(lan.path, cut, foS1ISP2, foServer); ok {
				ft.lanThroughISP2 = at.Sub(cut)
			}
		}
		if ft.flowMoved == 0 && ft.defaultMoved > 0 {
			if at, ok := firstReplyAfter(p1.Output(), cut.Add(ft.defaultMoved)); ok {
				ft.flowMoved = at.Sub(cut)
			}
		}
		if ft.registered == 0 {
			if at, ok := r.hub.eventTime(func(ev nhrp.Event) bool {
				return ev.Kind == nhrp.EventRegistered && ev.NBMA == foS1ISP2 && ev.Time.After(cut)
			}); ok {
				ft.registered = at.Sub(cut)
			}
		}
		if ft.shortcut == 0 {
			if at, ok := r.s2.eventTime(func(ev nhrp.Event) bool {
				return ev.Kind == nhrp.EventShortcutUp && ev.NBMA == foS1ISP2 && ev.Time.After(cut)
			}); ok {
				ft.shortcut = at.Sub(cut)
			}
		}
		return ft.defaultMoved > 0 && ft.lanThroughISP2 > 0 && ft.flowMoved > 0 && ft.registered > 0 && (ft.shortcut > 0 || !r.shortcuts)
	})
	lan.stop()
	return ft
}

// settle waits until s1 is back on isp1 with everything following:
// default route, NBMA address, the hub's registration.
func (r *failoverRig) settleOnISP1() {
	r.t.Helper()
	waitFor(r.t, slowVM(15*time.Second), "s1 back on isp1, registered from its address", func() bool {
		u := r.uplinks()
		return slices.Equal(r.via(), []string{"isp1"}) && len(u.NBMA) > 0 && u.NBMA[0] == foS1ISP1 && r.registeredAt(foS1Tunnel) == foS1ISP1
	})
}

// pingOut pings dst from a node once and reports the error.
func pingOut(n *testbed.Node, dst netip.Addr) error {
	out, err := n.Run(context.Background(), "ping", "-n", "-c", "1", "-W", "2", dst.String())
	if err != nil {
		return fmt.Errorf("%v: %s", err, strings.TrimSpace(out))
	}
	return nil
}

// slowVM stretches a deadline in the VM: under TCG every process start and
// IKE exchange takes many times longer.
func slowVM(d time.Duration) time.Duration {
	if vm.InGuest() {
		return 4 * d
	}
	return d
}

// reload writes a node's new configuration and reloads it (POST
// /v1/reload); it returns what changed.
func (d *daemonNode) reload(yaml string) ([]string, error) {
	d.t.Helper()
	yaml = strings.ReplaceAll(yaml, "@SOCKET@", d.socket)
	if err := os.WriteFile(d.config, []byte(yaml), 0o600); err != nil {
		d.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var rr control.ReloadResponse
	err := d.client.Post(ctx, control.PathReload, control.ReloadRequest{}, &rr)
	var ae *control.APIError
	if errors.As(err, &ae) && len(ae.Reasons) > 0 {
		err = fmt.Errorf("%w: %s", err, strings.Join(ae.Reasons, "; "))
	}
	return rr.Changes, err
}
