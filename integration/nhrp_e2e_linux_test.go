package integration

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/lab/testbed"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// The NHRP end-to-end scenario: a hub and three spokes with LANs in
// namespaces, dmvpnd on every node (userspace data plane, no IPsec), the
// spokes routing the other LANs via the hub (static routes stand in for
// BGP), spoke 3 behind a masquerading NAT router.
//
//	hub  192.0.2.1      tunnel 10.0.0.1
//	s1   198.51.100.1   tunnel 10.0.0.11  LAN 10.1.0.0/24 (host 10.1.0.2)
//	s2   198.51.100.65  tunnel 10.0.0.12  LAN 10.2.0.0/24 (host 10.2.0.2)
//	s3   NAT 203.0.113.1 tunnel 10.0.0.13 LAN 10.3.0.0/24 (host 10.3.0.2)

const e2eAuth = "dmvpn1"

func hubYAML(dataplane string) string {
	return fmt.Sprintf(`node: hub
role: hub
tunnel:
  interface: gre1
  address: 10.0.0.1/24
  key: 42
  dataplane: %s
  holding_time: 60
  authentication: %s
  redirect: true
  purge_on_shutdown: true
policy:
  allow: all
forwarding: true
logging:
  level: debug
metrics:
  enabled: false
control:
  socket: "@SOCKET@"
`, dataplane, e2eAuth)
}

func spokeYAML(name, dataplane, addr, lan string) string {
	return fmt.Sprintf(`node: %s
role: spoke
tunnel:
  interface: gre1
  address: %s/24
  key: 42
  dataplane: %s
  holding_time: 60
  authentication: %s
  nhs:
    - address: 10.0.0.1
      nbma: 192.0.2.1
  shortcut: true
  shortcut_idle: 8s
networks:
  - %s
forwarding: true
logging:
  level: debug
metrics:
  enabled: false
control:
  socket: "@SOCKET@"
`, name, addr, dataplane, e2eAuth, lan)
}

type e2e struct {
	t      testing.TB
	tb     *testbed.Testbed
	hub    *daemonNode
	spokes []*daemonNode
	hosts  []*testbed.Node
}

var (
	e2eTunnel = []netip.Addr{netip.MustParseAddr("10.0.0.11"), netip.MustParseAddr("10.0.0.12"), netip.MustParseAddr("10.0.0.13")}
	e2eLAN    = []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24"), netip.MustParsePrefix("10.2.0.0/24"), netip.MustParsePrefix("10.3.0.0/24")}
	e2eHubNB  = netip.MustParseAddr("192.0.2.1")
)

// newE2E builds the topology and starts every daemon.
func newE2E(t testing.TB, dataplane string) *e2e {
	return newE2EWith(t, dataplane, nil)
}

// newE2EWith builds the topology and starts every daemon; extra, when set,
// returns more YAML for a node's configuration (an ipsec section); before
// runs once the topology is up and no daemon has started (a capture).
func newE2EWith(t testing.TB, dataplane string, extra func(node string) string, before ...func(*testbed.Testbed)) *e2e {
	t.Helper()
	requireTestbed(t)
	bin := buildDmvpnd(t)
	spec := testbed.Spec{Sites: []testbed.Site{
		{Name: "hub", Kind: testbed.Hub, NBMA: netip.MustParsePrefix("192.0.2.1/24")},
		{Name: "s1", Kind: testbed.Spoke, NBMA: netip.MustParsePrefix("198.51.100.1/26"), LAN: netip.MustParsePrefix("10.1.0.1/24"), Hosts: 1},
		{Name: "s2", Kind: testbed.Spoke, NBMA: netip.MustParsePrefix("198.51.100.65/26"), LAN: netip.MustParsePrefix("10.2.0.1/24"), Hosts: 1},
		{Name: "s3", Kind: testbed.Spoke, NBMA: netip.MustParsePrefix("203.0.113.1/24"), LAN: netip.MustParsePrefix("10.3.0.1/24"), Hosts: 1, NAT: true},
	}}
	tb, err := testbed.New(context.Background(), spec, testbed.WithLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tb.Close() })
	x := &e2e{t: t, tb: tb}
	for _, f := range before {
		f(tb)
	}
	more := func(n string) string {
		if extra == nil {
			return "ipsec: off\n" // NHRP and GRE in clear, on purpose
		}
		return extra(n)
	}
	x.hub = startDaemon(t, bin, tb.Node("hub"), withExtra(hubYAML(dataplane), more("hub")))
	// The hub's routes to the spokes' LANs (BGP's job later).
	var routes []string
	for i := range e2eLAN {
		routes = append(routes, fmt.Sprintf("route add %s via %s dev gre1 onlink", e2eLAN[i], e2eTunnel[i]))
	}
	if err := tb.Node("hub").IP(routes...); err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"s1", "s2", "s3"} {
		d := startDaemon(t, bin, tb.Node(name), withExtra(spokeYAML(name, dataplane, e2eTunnel[i].String(), e2eLAN[i].String()), more(name)))
		if err := tb.Node(name).IP("route add 10.0.0.0/8 via 10.0.0.1 dev gre1 onlink"); err != nil {
			t.Fatal(err)
		}
		x.spokes = append(x.spokes, d)
		x.hosts = append(x.hosts, tb.Node(name+"-h1"))
	}
	return x
}

// withExtra appends a node's extra YAML to its configuration; a
// "tunnel:" section at the start of extra joins the configuration's own
// (a spoke's tunnel.mtu), keys the configuration does not set.
func withExtra(base, extra string) string {
	rest, ok := strings.CutPrefix(extra, "tunnel:\n")
	if !ok {
		return base + extra
	}
	var keys strings.Builder
	for rest != "" && strings.HasPrefix(rest, "  ") {
		line, after, _ := strings.Cut(rest, "\n")
		keys.WriteString(line + "\n")
		rest = after
	}
	return strings.Replace(base, "\ntunnel:\n", "\ntunnel:\n"+keys.String(), 1) + rest
}

// registered reports whether the hub holds a registration for spoke i.
func (x *e2e) registered(i int) bool {
	e, ok := x.hub.entry(netip.PrefixFrom(e2eTunnel[i], 32))
	return ok && e.Type == nhrp.TypeDynamic
}

func (x *e2e) allRegistered() bool {
	for i := range x.spokes {
		if !x.registered(i) {
			return false
		}
	}
	return true
}

// shortcut returns spoke i's shortcut entry for LAN j.
func (x *e2e) shortcut(i, j int) (nhrp.CacheEntry, bool) {
	e, ok := x.spokes[i].entry(e2eLAN[j])
	return e, ok && e.Type == nhrp.TypeShortcut
}

// TestNHRPEndToEnd runs the scenario on each data plane: userspace and
// ebpf (its BPF fast path must carry the spoke-to-spoke traffic) here,
// kernel (ip_gre, created by dmvpnd through netlink, NHRP on AF_PACKET,
// neighbours and misses through rtnetlink) in a VM with Debian's kernel
// when this one has no ip_gre.
func TestNHRPEndToEnd(t *testing.T) {
	t.Parallel() // the kernel half boots a VM: let it overlap the other VM tests
	for _, dp := range []string{"userspace", "kernel", "ebpf"} {
		t.Run(dp, func(t *testing.T) {
			if dp == "kernel" && runInVM(t, vmConfig()) {
				return
			}
			if dp == "ebpf" {
				needBPF(t)
			}
			testNHRPEndToEnd(t, dp)
		})
	}
}

func testNHRPEndToEnd(t *testing.T, dataplane string) {
	// The capture starts before any daemon: the registrations are in it.
	var cap *capture
	x := newE2EWith(t, dataplane, nil, func(tb *testbed.Testbed) { cap = startCapture(t, tb.Node("inet"), "any") })
	s1NBMA, s2NBMA, s3NBMA := netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.51.100.65"), netip.MustParseAddr("203.0.113.1")
	// What the underlay carries, whatever the data plane: the GRE data
	// packets spoke to spoke, and all GRE (bounded: no loop, no storm);
	// and what the hub relays.
	wire := countForwarded(t, x.tb.Node("inet"), map[string]string{
		"s1_s2": greData(s1NBMA, s2NBMA), "s2_s1": greData(s2NBMA, s1NBMA),
		"s1_s3": greData(s1NBMA, s3NBMA), "gre": "meta l4proto gre",
	})
	hub := countForwarded(t, x.tb.Node("hub"), map[string]string{"relayed": relayedOn("gre1")})

	d := waitFor(t, 30*time.Second, "all spokes registered", x.allRegistered)
	t.Logf("all three spokes registered %v after the last daemon started", d.Round(time.Millisecond))

	// The NATed spoke: the hub keeps both addresses and uses the outer one.
	nat, _ := x.hub.entry(netip.PrefixFrom(e2eTunnel[2], 32))
	if nat.NBMA != s3NBMA || !nat.ClaimedNBMA.IsValid() || !strings.Contains(strings.Join(nat.Flags, ","), "nat") {
		t.Errorf("hub entry of the NATed spoke: %s", jsonString(nat))
	}

	// Phase 2: spoke 2 reaches spoke 1's tunnel address, on the tunnel's
	// subnet: no neighbour yet, so the data plane reports a miss, the
	// engine resolves it through the hub and the packet goes straight
	// (TTL 64: no router in between).
	misses0 := x.spokes[1].traffic().Dataplane.Misses
	s21 := wire.value("s2_s1")
	var ttl int
	waitFor(t, 10*time.Second, "spoke 2 to reach spoke 1's tunnel address", func() bool {
		var err error
		ttl, err = pingTTL(t, x.tb.Node("s2"), e2eTunnel[0])
		return err == nil
	})
	if ttl != 64 {
		t.Errorf("ping of spoke 1's tunnel address: TTL %d, want 64 (direct)", ttl)
	}
	if n := x.spokes[1].traffic().Dataplane.Misses - misses0; n == 0 {
		t.Error("spoke 2's data plane reported no neighbour miss")
	}
	if e, ok := x.spokes[1].entry(netip.PrefixFrom(e2eTunnel[0], 32)); !ok || e.NBMA != s1NBMA || e.Type != nhrp.TypeCached {
		t.Errorf("spoke 2's binding of spoke 1: %s (%v)", jsonString(e), ok)
	}
	if n := wire.value("s2_s1") - s21; n == 0 {
		t.Error("no GRE data packet went from spoke 2 straight to spoke 1")
	}

	// Phase 3: the first packet from LAN 1 to LAN 2 crosses the hub; the
	// hub redirects both spokes (the request and the reply were relayed);
	// each has a shortcut within a second of the redirect.
	h1, h2 := x.hosts[0], x.hosts[1]
	relayed0 := hub.value("relayed")
	start := time.Now()
	ttl, err := pingTTL(t, h1, x.hosts[1].Addr)
	if err != nil {
		t.Fatal(err)
	}
	if ttl != 61 {
		t.Errorf("first ping: TTL %d, want 61 (through the hub)", ttl)
	}
	waitFor(t, 5*time.Second, "the shortcuts between LAN 1 and LAN 2", func() bool {
		_, ok1 := x.shortcut(0, 1)
		_, ok2 := x.shortcut(1, 0)
		return ok1 && ok2
	})
	t.Logf("shortcuts 10.2.0.0/24 and 10.1.0.0/24 installed %v after the first packet", time.Since(start).Round(time.Millisecond))
	for _, c := range []struct{ from, to int }{{0, 1}, {1, 0}} {
		var redirect, up time.Time
		nbma := []netip.Addr{s1NBMA, s2NBMA}[c.from]
		waitFor(t, 5*time.Second, "the events of the redirect and the shortcut", func() bool {
			var ok1, ok2 bool
			redirect, ok1 = x.hub.eventTime(func(ev nhrp.Event) bool {
				return ev.Packet != nil && ev.Packet.Dir == "out" && ev.Packet.Peer == nbma && strings.HasPrefix(ev.Packet.Summary, "Traffic Indication")
			})
			up, ok2 = x.spokes[c.from].eventTime(func(ev nhrp.Event) bool {
				return ev.Kind == nhrp.EventShortcutUp && ev.Proto == e2eLAN[c.to]
			})
			return ok1 && ok2
		})
		if d := up.Sub(redirect); d > time.Second || d < 0 {
			t.Errorf("spoke %d: shortcut to %s %v after the hub's redirect, want within 1 s", c.from+1, e2eLAN[c.to], d)
		} else {
			t.Logf("spoke %d: shortcut to %s %v after the hub's redirect", c.from+1, e2eLAN[c.to], d.Round(time.Millisecond))
		}
	}
	sc, _ := x.shortcut(0, 1)
	if sc.NextHop != e2eTunnel[1] || sc.NBMA != s2NBMA {
		t.Errorf("shortcut %s", jsonString(sc))
	}
	if n := x.hub.traffic().NHRP.Sent["Traffic Indication"]; n == 0 {
		t.Error("the hub sent no Traffic Indication")
	}
	if dataplane == "kernel" {
		x.checkKernelState()
	}

	// After the shortcut, traffic flows spoke to spoke: the hub relays
	// nothing more, spoke 1 sends to spoke 2's NBMA, TTL shows one hop less.
	// Each spoke puts its shortcut route in its data plane once the
	// engine has it (on the kernel data plane through netlink, off the
	// engine's goroutine): wait for one echo to come back straight before
	// counting (a loaded CI machine saw the first two through the hub).
	waitFor(t, 10*time.Second, "an echo from LAN 2 straight back over the shortcut (TTL 62)", func() bool {
		ttl, err := pingTTL(t, h1, h2.Addr)
		return err == nil && ttl == 62
	})
	relayed1 := hub.value("relayed")
	s12 := wire.value("s1_s2")
	var tx0, fast0 uint64
	if dataplane != "kernel" { // the kernel keeps no per-peer counters
		tx0 = x.spokes[0].peerTx(s2NBMA)
		fast0 = x.spokes[0].traffic().Dataplane.FastTxPackets
	}
	if ttls, err := pingTTLs(t, h1, h2.Addr, 20); err != nil || slices.ContainsFunc(ttls, func(ttl int) bool { return ttl != 62 }) {
		t.Fatalf("pings over the shortcut: TTLs %v, %v (want 62: direct)", ttls, err)
	}
	if n := hub.value("relayed") - relayed1; n > 2 {
		t.Errorf("the hub still relayed %d packets after the shortcut", n)
	}
	if n := wire.value("s1_s2") - s12; n < 20 {
		t.Errorf("the underlay carried %d GRE data packets from spoke 1 straight to spoke 2, want ≥ 20", n)
	}
	if dataplane != "kernel" {
		if n := x.spokes[0].peerTx(s2NBMA) - tx0; n < 20 {
			t.Errorf("spoke 1's data plane counted %d packets sent straight to spoke 2, want ≥ 20", n)
		}
	}
	if dataplane == "ebpf" {
		if n := x.spokes[0].traffic().Dataplane.FastTxPackets - fast0; n < 20 {
			t.Errorf("spoke 1's BPF fast path sent %d packets over the shortcut, want ≥ 20", n)
		}
	}
	t.Logf("hub relayed %d packets before the shortcut, %d after", relayed1-relayed0, hub.value("relayed")-relayed1)

	// Idle: the shortcut expires and traffic goes through the hub again.
	waitFor(t, 30*time.Second, "the idle shortcut to expire", func() bool { _, ok := x.shortcut(0, 1); return !ok })

	// The NATed spoke is reachable by shortcut too.
	if _, err := pingTTL(t, h1, x.hosts[2].Addr); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the shortcut to the NATed spoke's LAN", func() bool { _, ok := x.shortcut(0, 2); return ok })
	sc3, _ := x.shortcut(0, 2)
	if sc3.NBMA != s3NBMA {
		t.Errorf("shortcut to the NATed spoke goes to %s, want its public address", sc3.NBMA)
	}
	s13 := wire.value("s1_s3")
	if ttls, err := pingTTLs(t, h1, x.hosts[2].Addr, 5); err != nil || slices.ContainsFunc(ttls, func(ttl int) bool { return ttl != 62 }) {
		t.Fatalf("pings to the NATed spoke's LAN: TTLs %v, %v (want 62: direct)", ttls, err)
	}
	if n := wire.value("s1_s3") - s13; n < 5 {
		t.Errorf("the underlay carried %d GRE data packets from spoke 1 straight to the NATed spoke", n)
	}

	// Restarting the hub: the spokes are registered again within seconds
	// (the hub restores what it held from its state file, and the spokes'
	// next registrations confirm it).
	x.hub.stop()
	if dataplane == "ebpf" {
		if left := bpfLeftovers(t, x.tb.Node("hub").NS); len(left) > 0 {
			t.Errorf("BPF left behind after the hub's dmvpnd stopped: %v", left)
		}
	}
	stopped := time.Now()
	x.hub.start()
	waitFor(t, 15*time.Second, "re-registration after the hub restart", x.allRegistered)
	t.Logf("all spokes registered again %v after the hub stopped", time.Since(stopped).Round(time.Millisecond))

	// A few hundred GRE packets in all: a loop (a packet bounced between
	// nodes) would show thousands.
	if n := wire.value("gre"); n > 2000 {
		t.Errorf("the underlay carried %d GRE packets during the test: a loop?", n)
	}

	// Every NHRP packet of the test is well-formed NHRP for tshark and
	// round-trips through the codec.
	checkCapture(t, cap.stop(), captureCheck{Name: "e2e-" + dataplane, Types: []string{"1", "2", "3", "4", "5", "8"}})
}

// checkKernelState proves what the kernel backend put in the kernel: the
// hub's multipoint GRE device as dmvpnd created it through netlink (key,
// TTL, path-MTU discovery, no remote), a neighbour entry per registered spoke
// (tunnel address → NBMA address as a 4-byte lladdr), and spoke 1's
// shortcut route in the shortcut table.
func (x *e2e) checkKernelState() {
	t := x.t
	t.Helper()
	ip := func(n *testbed.Node, v any, args ...string) {
		t.Helper()
		if err := ipJSON(n, v, args...); err != nil {
			t.Fatalf("%s: %v", n.Name, err)
		}
	}
	var links []struct {
		LinkInfo struct {
			Kind string `json:"info_kind"`
			Data struct {
				Remote   string `json:"remote"`
				IKey     string `json:"ikey"`
				OKey     string `json:"okey"`
				TTL      int    `json:"ttl"`
				PMTUDisc bool   `json:"pmtudisc"`
			} `json:"info_data"`
		} `json:"linkinfo"`
	}
	ip(x.tb.Node("hub"), &links, "-d", "link", "show", "gre1")
	key := "0.0.0.42"
	if len(links) != 1 || links[0].LinkInfo.Kind != "gre" || links[0].LinkInfo.Data.IKey != key || links[0].LinkInfo.Data.OKey != key ||
		links[0].LinkInfo.Data.TTL != gre.DefaultTTL || !links[0].LinkInfo.Data.PMTUDisc ||
		(links[0].LinkInfo.Data.Remote != "" && links[0].LinkInfo.Data.Remote != "any") {
		t.Errorf("the hub's gre1 is not a multipoint GRE device with key 42, TTL %d and pmtudisc: %s", gre.DefaultTTL, jsonString(links))
	}
	var neigh []struct {
		Dst    string `json:"dst"`
		LLAddr string `json:"lladdr"`
	}
	ip(x.tb.Node("hub"), &neigh, "neigh", "show", "dev", "gre1")
	got := map[string]string{}
	for _, n := range neigh {
		got[n.Dst] = n.LLAddr
	}
	want := map[string]string{"10.0.0.11": "198.51.100.1", "10.0.0.12": "198.51.100.65", "10.0.0.13": "203.0.113.1"}
	for dst, ll := range want {
		if got[dst] != ll {
			t.Errorf("the hub's kernel neighbour %s: lladdr %q, want %s (all: %v)", dst, got[dst], ll, got)
		}
	}
	var routes []struct {
		Dst     string `json:"dst"`
		Gateway string `json:"gateway"`
		Dev     string `json:"dev"`
	}
	ip(x.tb.Node("s1"), &routes, "route", "show", "table", fmt.Sprint(nhrp.DefaultShortcutTable), "10.2.0.0/24")
	if len(routes) != 1 || routes[0].Gateway != "10.0.0.12" || routes[0].Dev != "gre1" {
		t.Errorf("spoke 1's shortcut route in table %d: %s", nhrp.DefaultShortcutTable, jsonString(routes))
	}
}
