package integration

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/integration/testbed"
	"github.com/opendmvpn/dmvpn/internal/tsharktest"
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
	t      *testing.T
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
func newE2E(t *testing.T, dataplane string) *e2e {
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
	x.hub = startDaemon(t, bin, tb.Node("hub"), hubYAML(dataplane))
	// The hub's routes to the spokes' LANs (BGP's job later).
	var routes []string
	for i := range e2eLAN {
		routes = append(routes, fmt.Sprintf("route add %s via %s dev gre1 onlink", e2eLAN[i], e2eTunnel[i]))
	}
	if err := tb.Node("hub").IP(routes...); err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"s1", "s2", "s3"} {
		d := startDaemon(t, bin, tb.Node(name), spokeYAML(name, dataplane, e2eTunnel[i].String(), e2eLAN[i].String()))
		if err := tb.Node(name).IP("route add 10.0.0.0/8 via 10.0.0.1 dev gre1 onlink"); err != nil {
			t.Fatal(err)
		}
		x.spokes = append(x.spokes, d)
		x.hosts = append(x.hosts, tb.Node(name+"-h1"))
	}
	return x
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

// hubRelayed returns the data packets the hub's tunnel received (the
// traffic it relays).
func (x *e2e) hubRelayed() uint64 {
	tr := x.hub.traffic()
	if tr.Dataplane == nil {
		x.t.Fatal("hub: no data-plane counters")
	}
	return tr.Dataplane.RxPackets
}

func TestNHRPEndToEnd(t *testing.T) {
	for _, dp := range []string{"userspace"} {
		t.Run(dp, func(t *testing.T) { testNHRPEndToEnd(t, dp) })
	}
}

func testNHRPEndToEnd(t *testing.T, dataplane string) {
	x := newE2E(t, dataplane)
	cap := startCapture(t, x.tb.Node("inet"), "any")

	d := waitFor(t, 20*time.Second, "all spokes registered", x.allRegistered)
	t.Logf("all three spokes registered %v after the last daemon started", d.Round(time.Millisecond))

	// The NATed spoke: the hub keeps both addresses and uses the outer one.
	nat, _ := x.hub.entry(netip.PrefixFrom(e2eTunnel[2], 32))
	if nat.NBMA != netip.MustParseAddr("203.0.113.1") || !nat.ClaimedNBMA.IsValid() || !strings.Contains(strings.Join(nat.Flags, ","), "nat") {
		t.Errorf("hub entry of the NATed spoke: %s", jsonString(nat))
	}

	// Phase 3: the first packet from LAN 1 to LAN 2 crosses the hub; the
	// hub redirects; a shortcut is installed within a second.
	h1, h2 := x.hosts[0], x.hosts[1]
	relayed0 := x.hubRelayed()
	start := time.Now()
	ttl, err := pingTTL(t, h1, x.hosts[1].Addr)
	if err != nil {
		t.Fatal(err)
	}
	if ttl != 61 {
		t.Errorf("first ping: TTL %d, want 61 (through the hub)", ttl)
	}
	took := waitFor(t, 5*time.Second, "the shortcut to LAN 2", func() bool { _, ok := x.shortcut(0, 1); return ok })
	if took > time.Second {
		t.Errorf("shortcut installed %v after the first packet, want within 1 s", took)
	}
	t.Logf("shortcut 10.2.0.0/24 installed %v after the first packet", time.Since(start).Round(time.Millisecond))
	sc, _ := x.shortcut(0, 1)
	if sc.NextHop != e2eTunnel[1] || sc.NBMA != netip.MustParseAddr("198.51.100.65") {
		t.Errorf("shortcut %s", jsonString(sc))
	}
	if n := x.hub.traffic().NHRP.Sent["Traffic Indication"]; n == 0 {
		t.Error("the hub sent no Traffic Indication")
	}

	// After the shortcut, traffic flows spoke to spoke: the hub relays
	// nothing more, spoke 1 sends to spoke 2's NBMA, TTL shows one hop less.
	relayed1 := x.hubRelayed()
	tx0 := x.spokes[0].peerTx(netip.MustParseAddr("198.51.100.65"))
	for i := 0; i < 20; i++ {
		if ttl, err := pingTTL(t, h1, h2.Addr); err != nil || ttl != 62 {
			t.Fatalf("ping %d over the shortcut: TTL %d, %v (want 62: direct)", i, ttl, err)
		}
	}
	if n := x.hubRelayed() - relayed1; n > 2 {
		t.Errorf("the hub still relayed %d packets after the shortcut", n)
	}
	if n := x.spokes[0].peerTx(netip.MustParseAddr("198.51.100.65")) - tx0; n < 20 {
		t.Errorf("spoke 1 sent %d packets straight to spoke 2, want ≥ 20", n)
	}
	t.Logf("hub relayed %d packets before the shortcut, %d after", relayed1-relayed0, x.hubRelayed()-relayed1)

	// Idle: the shortcut expires and traffic goes through the hub again.
	waitFor(t, 30*time.Second, "the idle shortcut to expire", func() bool { _, ok := x.shortcut(0, 1); return !ok })

	// The NATed spoke is reachable by shortcut too.
	if _, err := pingTTL(t, h1, x.hosts[2].Addr); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the shortcut to the NATed spoke's LAN", func() bool { _, ok := x.shortcut(0, 2); return ok })
	sc3, _ := x.shortcut(0, 2)
	if sc3.NBMA != netip.MustParseAddr("203.0.113.1") {
		t.Errorf("shortcut to the NATed spoke goes to %s, want its public address", sc3.NBMA)
	}
	tx3 := x.spokes[0].peerTx(netip.MustParseAddr("203.0.113.1"))
	for i := 0; i < 5; i++ {
		if ttl, err := pingTTL(t, h1, x.hosts[2].Addr); err != nil || ttl != 62 {
			t.Fatalf("ping %d to the NATed spoke's LAN: TTL %d, %v", i, ttl, err)
		}
	}
	if n := x.spokes[0].peerTx(netip.MustParseAddr("203.0.113.1")) - tx3; n < 5 {
		t.Errorf("spoke 1 sent %d packets straight to the NATed spoke", n)
	}

	// Restarting the hub makes the spokes register again within seconds.
	x.hub.stop()
	stopped := time.Now()
	x.hub.start()
	d = waitFor(t, 15*time.Second, "re-registration after the hub restart", x.allRegistered)
	t.Logf("all spokes registered again %v after the hub stopped", time.Since(stopped).Round(time.Millisecond))
	_ = d

	// Every NHRP packet of the test is well-formed NHRP for tshark.
	path := cap.stop()
	probs, types, err := tsharktest.CheckNHRP(path, nil)
	if errors.Is(err, tsharktest.ErrNoTshark) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range probs {
		t.Errorf("tshark frame %s: %s", p.Frame, p.Detail)
	}
	seen := map[string]int{}
	for _, ty := range types {
		seen[ty]++
	}
	for _, want := range []string{"1", "2", "3", "4", "5", "8"} {
		if seen[want] == 0 {
			t.Errorf("no NHRP packet of type %s captured (saw %v)", want, seen)
		}
	}
	t.Logf("tshark dissected %d NHRP packets cleanly, by type: %v", len(types), seen)
}
