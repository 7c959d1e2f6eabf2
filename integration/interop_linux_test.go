package integration

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/integration/vm"
	"github.com/opendmvpn/dmvpn/lab/testbed"
	"github.com/opendmvpn/dmvpn/nhrp"
	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// Interoperation topologies: a hub and spokes with LANs, each node dmvpnd
// or FRR's nhrpd, the spokes routing the tunnel network and the other LANs
// through the hub (static routes stand in for BGP), no IPsec.

// impl is an NHRP implementation.
type impl string

const (
	ours impl = "dmvpnd"
	frr  impl = "FRR"
)

// member is a node of an interoperation topology.
type member struct {
	name string
	impl impl
	hub  bool
	// nbma is the site's internet address and subnet; tunnel its tunnel
	// address; lan its LAN (the site .1, one host .2), for spokes.
	nbma   netip.Prefix
	tunnel netip.Addr
	lan    netip.Prefix
	// dataplane of dmvpnd ("kernel" unless set).
	dataplane string
	// noUnique clears the unique flag (FRR's "registration no-unique").
	noUnique bool
	// holdTime of FRR's registrations (0: FRR's default, 7200 s).
	holdTime int
	// onHost: in a VM run, the node lives on the host, behind a TAP.
	onHost bool
}

// nhrpNode is what a test asks of a node, whatever its implementation.
type nhrpNode interface {
	// registration returns the NBMA address this hub bound a client's
	// tunnel address to.
	registration(tunnel netip.Addr) (netip.Addr, bool)
	// shortcut returns this spoke's shortcut to a network: its tunnel
	// next hop and that next hop's NBMA address.
	shortcut(lan netip.Prefix) (via, nbma netip.Addr, ok bool)
}

// registration: a dynamic cache entry (dmvpnd hub).
func (d *daemonNode) registration(tunnel netip.Addr) (netip.Addr, bool) {
	e, ok := d.entry(netip.PrefixFrom(tunnel, tunnel.BitLen()))
	return e.NBMA, ok && e.Type == nhrp.TypeDynamic
}

// shortcut: a shortcut cache entry (dmvpnd spoke).
func (d *daemonNode) shortcut(lan netip.Prefix) (netip.Addr, netip.Addr, bool) {
	e, ok := d.entry(lan)
	return e.NextHop, e.NBMA, ok && e.Type == nhrp.TypeShortcut
}

// hubTunnel is every topology's hub tunnel address.
var hubTunnel = netip.MustParseAddr("10.0.0.1")

// memberYAML is dmvpnd's configuration for a member: NHRP without
// authentication (FRR 8.4 has none) and without IPsec, the kernel data plane unless said
// otherwise, the hub known by its NBMA address only (its tunnel address is
// learned from its replies, as with FRR's "nhs dynamic").
func memberYAML(m member, hubNBMA netip.Addr) string {
	dp := m.dataplane
	if dp == "" {
		dp = "kernel"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "node: %s\n", m.name)
	if m.hub {
		b.WriteString("role: hub\n")
	} else {
		b.WriteString("role: spoke\n")
	}
	fmt.Fprintf(&b, "tunnel:\n  interface: gre1\n  address: %s/24\n  key: 42\n  dataplane: %s\n  holding_time: 60\n", m.tunnel, dp)
	if m.hub {
		b.WriteString("  redirect: true\n  purge_on_shutdown: true\npolicy:\n  allow: all\n")
	} else {
		fmt.Fprintf(&b, "  nhs:\n    - nbma: %s\n  shortcut: true\nnetworks:\n  - %s\n", hubNBMA, m.lan)
	}
	b.WriteString("forwarding: true\nlogging:\n  level: debug\nmetrics:\n  enabled: false\ncontrol:\n  socket: \"@SOCKET@\"\n")
	// FRR's IPsec needs a patched strongSwan: these runs are in clear, on
	// purpose.
	b.WriteString("ipsec: off\n")
	return b.String()
}

// interop is a running topology.
type interop struct {
	t       *testing.T
	tb      *testbed.Testbed
	members []member
	nodes   map[string]nhrpNode // nil for members on the host
	hub     member
	wire    *nftCounters // the internet router: GRE data between NBMA addresses
	relay   *nftCounters // the hub: packets relayed tunnel to tunnel
	cap     *capture
}

// member returns a member by name.
func (x *interop) member(name string) member {
	for _, m := range x.members {
		if m.name == name {
			return m
		}
	}
	x.t.Fatalf("no member %q", name)
	return member{}
}

// local reports whether a member runs in this testbed (not on the host
// behind the TAP of a VM run).
func local(m member) bool { return !(m.onHost && vm.InGuest()) }

// newInterop builds the topology of the local members, starts the capture
// and the counters, then the hub, then the spokes; extra runs after the
// testbed is built, before any NHRP node starts (the TAP's link).
func newInterop(t *testing.T, members []member, extra func(*testbed.Testbed)) *interop {
	t.Helper()
	requireTestbed(t)
	x := &interop{t: t, members: members, nodes: map[string]nhrpNode{}}
	var spec testbed.Spec
	for _, m := range members {
		if m.hub {
			x.hub = m
		}
		if !local(m) {
			continue
		}
		s := testbed.Site{Name: m.name, Kind: testbed.Spoke, NBMA: m.nbma}
		if m.hub {
			s.Kind = testbed.Hub
		}
		if m.lan.IsValid() {
			s.LAN, s.Hosts = netip.PrefixFrom(m.lan.Addr().Next(), m.lan.Bits()), 1
		}
		spec.Sites = append(spec.Sites, s)
	}
	tb, err := testbed.New(context.Background(), spec, testbed.WithLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tb.Close() })
	x.tb = tb
	if extra != nil {
		extra(tb)
	}
	x.cap = startCapture(t, tb.Node("inet"), "any")
	rules := map[string]string{"gre": "meta l4proto gre"}
	for _, a := range members {
		for _, b := range members {
			if a.name != b.name && !a.hub && !b.hub {
				rules[a.name+"_"+b.name] = greData(a.nbma.Addr(), b.nbma.Addr())
			}
		}
	}
	x.wire = countForwarded(t, tb.Node("inet"), rules)
	x.relay = countForwarded(t, tb.Node(x.hub.name), map[string]string{"relayed": relayedOn("gre1")})

	var bin string
	start := func(m member) {
		n := tb.Node(m.name)
		switch m.impl {
		case ours:
			if bin == "" {
				bin = buildDmvpnd(t)
			}
			x.nodes[m.name] = startDaemon(t, bin, n, memberYAML(m, x.hub.nbma.Addr()))
		case frr:
			cfg := frrConfig{Tunnel: m.tunnel, Hub: m.hub, NoUnique: m.noUnique, HoldTime: m.holdTime}
			if !m.hub {
				cfg.NHS = x.hub.nbma.Addr()
			}
			x.nodes[m.name] = startFRR(t, n, cfg)
		}
	}
	start(x.hub)
	// The hub's routes to the spokes' LANs.
	var routes []string
	for _, m := range members {
		if !m.hub && m.lan.IsValid() {
			routes = append(routes, fmt.Sprintf("route add %s via %s dev gre1 onlink", m.lan, m.tunnel))
		}
	}
	if err := tb.Node(x.hub.name).IP(routes...); err != nil {
		t.Fatal(err)
	}
	for _, m := range members {
		if m.hub || !local(m) {
			continue
		}
		start(m)
		x.routeViaHub(tb.Node(m.name))
	}
	return x
}

// routeViaHub routes the tunnel network and the other LANs of a spoke's
// node through the hub.
func (x *interop) routeViaHub(n *testbed.Node) {
	x.t.Helper()
	if err := n.IP(fmt.Sprintf("route add 10.0.0.0/8 via %s dev gre1 onlink", hubTunnel)); err != nil {
		x.t.Fatal(err)
	}
}

// waitRegistered waits until the hub holds the registration of every
// spoke named, at its NBMA address.
func (x *interop) waitRegistered(names ...string) {
	x.t.Helper()
	hub := x.nodes[x.hub.name]
	start := time.Now()
	waitFor(x.t, 30*time.Second, fmt.Sprintf("%v registered with the %s hub", names, x.hub.impl), func() bool {
		for _, name := range names {
			m := x.member(name)
			if nbma, ok := hub.registration(m.tunnel); !ok || nbma != m.nbma.Addr() {
				return false
			}
		}
		return true
	})
	x.t.Logf("%v registered with the %s hub within %v", names, x.hub.impl, time.Since(start).Round(time.Millisecond))
}

// lanHost is a member's LAN host address.
func lanHost(m member) netip.Addr { return m.lan.Addr().Next().Next() }

// shortcutBetween sends pings from a's LAN host to b's until a has a
// shortcut to b's LAN through b (and b one to a's, when both and b runs
// here), then proves the traffic direct: TTL 62 (no hub in between), the
// underlay carrying a's GRE data packets straight to b (and b's to a), the
// hub relaying nothing more.
func (x *interop) shortcutBetween(a, b string, both bool) {
	t := x.t
	t.Helper()
	ma, mb := x.member(a), x.member(b)
	src := x.tb.Node(a + "-h1")
	dst := lanHost(mb)
	ttl, err := pingTTL(t, src, dst)
	if err != nil {
		t.Fatal(err)
	}
	if ttl != 61 {
		t.Errorf("%s → %s: first ping TTL %d, want 61 (through the hub)", a, b, ttl)
	}
	start := time.Now()
	what := fmt.Sprintf("%s (%s) to build a shortcut to %s (%s)", a, ma.impl, b, mb.impl)
	if both {
		what += " and back"
	}
	waitFor(t, 30*time.Second, what, func() bool {
		if via, nbma, ok := x.nodes[a].shortcut(mb.lan); !ok || via != mb.tunnel || nbma != mb.nbma.Addr() {
			pingTTL(t, src, dst) // relayed traffic triggers the hub's redirect
			return false
		}
		if !both {
			return true
		}
		if nb := x.nodes[b]; nb != nil {
			if via, nbma, ok := nb.shortcut(ma.lan); !ok || via != ma.tunnel || nbma != ma.nbma.Addr() {
				pingTTL(t, src, dst)
				return false
			}
			return true
		}
		// b runs on the host: its shortcut shows in the replies' TTL.
		ttl, err := pingTTL(t, src, dst)
		return err == nil && ttl == 62
	})
	took := time.Since(start).Round(time.Millisecond)
	relayed0 := x.relay.value("relayed")
	w0 := x.wire.get()
	const n = 10
	ttls, err := pingTTLs(t, src, dst, n)
	if err != nil {
		t.Fatalf("%s → %s: pings over the shortcut: %v", a, b, err)
	}
	if both && slices.ContainsFunc(ttls, func(ttl int) bool { return ttl != 62 }) {
		t.Fatalf("%s → %s: pings over the shortcut: TTLs %v, want 62 (direct both ways)", a, b, ttls)
	}
	w1 := x.wire.get()
	if d := w1[a+"_"+b] - w0[a+"_"+b]; d < n {
		t.Errorf("the underlay carried %d GRE data packets from %s straight to %s, want ≥ %d", d, a, b, n)
	}
	if d := w1[b+"_"+a] - w0[b+"_"+a]; both && d < n {
		t.Errorf("the underlay carried %d GRE data packets from %s straight to %s, want ≥ %d", d, b, a, n)
	}
	if d := x.relay.value("relayed") - relayed0; d > 2 {
		t.Errorf("the %s hub still relayed %d packets between %s and %s after the shortcut", x.hub.impl, d, a, b)
	}
	t.Logf("%s (%s) ↔ %s (%s): shortcut within %v of the first packet, then %d pings direct (TTL 62)", a, ma.impl, b, mb.impl, took, n)
}

// finish checks the capture: every NHRP packet well-formed for tshark and
// round-tripped through the codec, those of FRR included; the types given
// among them, and among FRR's.
func (x *interop) finish(name string, types []string, frrTypes ...wire.Type) {
	x.t.Helper()
	if n := x.wire.value("gre"); n > 3000 {
		x.t.Errorf("the underlay carried %d GRE packets during the test: a loop?", n)
	}
	c := captureCheck{Name: name, Types: types, FRRTypes: frrTypes}
	for _, m := range x.members {
		if m.impl == frr {
			c.FRR = append(c.FRR, m.nbma.Addr())
		}
	}
	checkCapture(x.t, x.cap.stop(), c)
}
