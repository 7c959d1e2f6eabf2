package integration

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/integration/dphelper"
	"github.com/opendmvpn/dmvpn/lab/testbed"
)

func TestNeighborMissAndHoldQueue(t *testing.T) {
	needRoot(t, "ping")
	forEachBackend(t, testNeighborMissAndHoldQueue)
}

// testNeighborMissAndHoldQueue: a packet to a next hop without a neighbour
// entry raises a miss and is held until the entry appears.
func testNeighborMissAndHoldQueue(t *testing.T, be string) {
	p := twoSpokes(t, be, func(a, b *dphelper.Config, _ *testbed.Spec) { a.Neighbors = nil })
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	// One ping with a long wait: its echo request is held while the next
	// hop is unresolved and must go out once the entry appears.
	pinger, err := p.tb.Node("spa").Start(testbed.ProcSpec{Name: "ping", Args: []string{"ping", "-c", "1", "-W", "8", tunB.String()}})
	if err != nil {
		t.Fatal(err)
	}
	m, err := p.a.WaitMiss(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if m.NextHop != tunB || (be == "userspace" && m.Dst != tunB) {
		t.Fatalf("miss = %+v, want next hop (and, userspace, destination) %s", m, tunB)
	}
	if err := p.a.SetNeighbor(ctx, tunB, nbmaB); err != nil {
		t.Fatal(err)
	}
	if err := pinger.Wait(ctx); err != nil {
		t.Fatalf("held ping did not complete after the neighbour appeared: %v\n%s", err, pinger.Output())
	}
	if !strings.Contains(pinger.Output(), "1 received") {
		t.Fatalf("ping output:\n%s", pinger.Output())
	}
	// A LAN destination routed via an unknown tunnel next hop raises a miss
	// naming both.
	if err := p.tb.Node("spa").IP("route add 10.9.0.0/24 via 10.0.0.9 dev dmvpn0 onlink"); err != nil {
		t.Fatal(err)
	}
	p.ha.Run(ctx, "ping", "-c", "1", "-W", "1", "10.9.0.7")
	m, err = p.a.WaitMiss(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := gre.Miss{NextHop: netip.MustParseAddr("10.0.0.9"), Dst: netip.MustParseAddr("10.9.0.7")}
	if be == "kernel" {
		want.Dst = netip.Addr{} // the kernel does not say
	}
	if m != want {
		t.Fatalf("miss = %+v, want %+v", m, want)
	}
	c, err := p.a.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c.Misses != 2 && !(be == "kernel" && c.Misses > 2) {
		t.Errorf("Misses = %d, want 2", c.Misses)
	}
}

func TestShortcutTableWithRule(t *testing.T) {
	needRoot(t, "ping")
	forEachBackend(t, testShortcutTableWithRule)
}

// testShortcutTableWithRule puts the tunnel route in its own table selected
// by an ip rule ahead of main, with a decoy route in main: the data plane
// must follow the kernel's policy routing, and notice when the route changes.
func testShortcutTableWithRule(t *testing.T, be string) {
	p := twoSpokes(t, be, func(a, b *dphelper.Config, _ *testbed.Spec) {
		a.Routes = []dphelper.Route{{Dst: "10.2.0.0/24", Via: tunB.String(), Table: 42}}
	})
	spa := p.tb.Node("spa")
	if err := spa.IP("route add 10.2.0.0/24 via 10.0.0.77 dev dmvpn0 onlink", "rule add pref 100 lookup 42"); err != nil {
		t.Fatal(err)
	}
	ping(t, p.ha, p.hb.Addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if c, _ := p.a.Counters(ctx); c.Misses != 0 {
		t.Fatalf("misses while the shortcut table resolves: %d", c.Misses)
	}
	// Move the shortcut to an unresolved next hop: the cache must follow.
	if err := spa.IP("route replace 10.2.0.0/24 via 10.0.0.5 dev dmvpn0 onlink table 42"); err != nil {
		t.Fatal(err)
	}
	waitMissVia(ctx, t, p, "10.0.0.5", "table 42 after the change")
	// Without the rule, main's decoy applies.
	if err := spa.IP("rule del pref 100 lookup 42"); err != nil {
		t.Fatal(err)
	}
	waitMissVia(ctx, t, p, "10.0.0.77", "main table")
}

// waitMissVia pings across the pair until the data plane reports a miss
// through next hop want: the data plane learns a route or rule change from
// the kernel's events, so a packet sent right after the change may still
// take the old route (a miss through it is seen and passed over); the new
// one must be followed before ctx ends.
func waitMissVia(ctx context.Context, t *testing.T, p *pair, want, why string) {
	t.Helper()
	var seen []netip.Addr
	for ctx.Err() == nil {
		p.ha.Run(ctx, "ping", "-c", "1", "-W", "1", p.hb.Addr.String())
		try, cancel := context.WithTimeout(ctx, 2*time.Second)
		m, err := p.a.WaitMiss(try)
		cancel()
		if err != nil {
			continue // no miss for this packet (a repeated one may be held back): send another
		}
		if m.NextHop == netip.MustParseAddr(want) {
			return
		}
		seen = append(seen, m.NextHop)
	}
	t.Fatalf("no miss through next hop %s (%s) before the deadline; misses through %v", want, why, seen)
}

func TestFragNeededOverSmallPath(t *testing.T) {
	needRoot(t, "ping")
	forEachBackend(t, testFragNeededOverSmallPath)
}

// testFragNeededOverSmallPath: a DF packet too big for the NBMA path gets
// ICMP fragmentation-needed back to its sender.
func testFragNeededOverSmallPath(t *testing.T, be string) {
	p := twoSpokes(t, be, func(a, b *dphelper.Config, spec *testbed.Spec) {
		spec.Sites[1].UplinkMTU = 1400 // the internet's link toward spb
	})
	ping(t, p.ha, p.hb.Addr) // small packets pass
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	// 1448-byte inner packets fit the 1472 tunnel MTU of spa but not the
	// 1400-byte path: the first is lost (the router's ICMP teaches spa the
	// path MTU), the next get "fragmentation needed" with 1400-28.
	out, _ := p.ha.Run(ctx, "ping", "-c", "4", "-i", "0.3", "-W", "1", "-M", "do", "-s", "1420", p.hb.Addr.String())
	if !strings.Contains(out, "1372") {
		c, _ := p.a.Counters(ctx)
		t.Fatalf("no fragmentation-needed with MTU 1372 reached the sender:\n%s\nspa counters: %+v", out, c)
	}
	c, err := p.a.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if be != "kernel" && (c.FragNeeded == 0 || c.Drops["too_big"] == 0) {
		t.Fatalf("FragNeeded %d, too_big drops %d; want both > 0", c.FragNeeded, c.Drops["too_big"])
	}
	// Packets that fit the path still pass, and without DF big ones are
	// fragmented on the path (outer DF cleared).
	ping(t, p.ha, p.hb.Addr, "-s", "1300", "-M", "do")
	if be != "kernel" {
		// The userspace backend (and ebpf's slow path, where too-big
		// packets go) clears the outer DF of inner packets without DF,
		// so the path fragments them; the kernel's ip_gre with pmtudisc
		// keeps DF and drops them.
		ping(t, p.ha, p.hb.Addr, "-s", "1420", "-M", "dont")
	}
}

func TestKeyMismatch(t *testing.T) {
	needRoot(t, "ping")
	forEachBackend(t, testKeyMismatch)
}

// testKeyMismatch: GRE with another key is dropped.
func testKeyMismatch(t *testing.T, be string) {
	p := twoSpokes(t, be, func(a, b *dphelper.Config, _ *testbed.Spec) { b.Key = greKey + 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := p.tb.Node("spa").Run(ctx, "ping", "-c", "2", "-i", "0.2", "-W", "1", tunB.String())
	if err == nil {
		t.Fatalf("ping across mismatched keys succeeded:\n%s", out)
	}
	c, err := p.b.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if be != "kernel" && (c.Drops["bad_key"] < 2 || c.RxPackets != 0) {
		t.Fatalf("spb bad_key drops %d, rx %d; want ≥ 2 and 0", c.Drops["bad_key"], c.RxPackets)
	}
}

func TestIngressRefused(t *testing.T) {
	needRoot(t, "ping")
	forEachBackend(t, testIngressRefused, "userspace", "ebpf")
}

// testIngressRefused: GRE arriving on a refused interface is dropped.
func testIngressRefused(t *testing.T, be string) {
	p := twoSpokes(t, be, func(a, b *dphelper.Config, _ *testbed.Spec) { b.RefuseIngress = []string{"wan0"} })
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if out, err := p.tb.Node("spa").Run(ctx, "ping", "-c", "2", "-i", "0.2", "-W", "1", tunB.String()); err == nil {
		t.Fatalf("ping accepted through a refused interface:\n%s", out)
	}
	c, err := p.b.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c.Drops["ingress"] < 2 {
		t.Fatalf("spb ingress drops %d, want ≥ 2", c.Drops["ingress"])
	}
}

func TestBroadcastReplicated(t *testing.T) {
	needRoot(t, "ping")
	// The kernel drops packets to a tunnel broadcast address before any
	// tap sees them (the device's broadcast "NBMA" is 0.0.0.0): only the
	// userspace backend (and ebpf's slow path) replicates broadcast.
	forEachBackend(t, testBroadcastReplicated, "userspace", "ebpf")
}

// testBroadcastReplicated: a packet to the tunnel broadcast address goes
// to every NBMA of the multicast list.
func testBroadcastReplicated(t *testing.T, be string) {
	p := twoSpokes(t, be, func(a, b *dphelper.Config, _ *testbed.Spec) { a.Multicast = []string{nbmaB.String()} })
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	p.tb.Node("spa").Run(ctx, "ping", "-b", "-c", "3", "-i", "0.2", "-W", "1", "10.0.0.255")
	c, err := p.b.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c.RxPackets < 3 {
		t.Fatalf("spb received %d packets of the tunnel broadcast, want ≥ 3", c.RxPackets)
	}
}

func TestMulticastReplicated(t *testing.T) {
	needRoot(t, "ping")
	forEachBackend(t, testMulticastReplicated)
}

// testMulticastReplicated sends to a multicast group through the tunnel:
// every NBMA of the multicast list gets a unicast copy.
func testMulticastReplicated(t *testing.T, be string) {
	p := twoSpokes(t, be, func(a, b *dphelper.Config, _ *testbed.Spec) { a.Multicast = []string{nbmaB.String()} })
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	p.tb.Node("spa").Run(ctx, "ping", "-c", "3", "-i", "0.2", "-W", "1", "-I", "dmvpn0", "224.0.0.18")
	c, err := p.b.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c.RxPackets < 3 {
		t.Fatalf("spb received %d packets of the tunnel multicast, want ≥ 3", c.RxPackets)
	}
}

func TestNHRPThroughNAT(t *testing.T) {
	needRoot(t, "nft")
	forEachBackend(t, testNHRPThroughNAT)
}

// testNHRPThroughNAT exchanges NHRP packets between a spoke and one behind
// a masquerading NAT router: the reply goes to the NAT's public address.
func testNHRPThroughNAT(t *testing.T, be string) {
	p := twoSpokes(t, be, func(a, b *dphelper.Config, spec *testbed.Spec) { spec.Sites[1].NAT = true })
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if got := p.tb.Node("spb").Addr; got == nbmaB {
		t.Fatalf("spb has the public address %s behind NAT", got)
	}
	if err := p.b.WriteNHRP(ctx, nbmaA, []byte("registration")); err != nil {
		t.Fatal(err)
	}
	line, _, err := p.a.Proc.WaitFor(ctx, reNHRP, 0)
	if err != nil {
		t.Fatal(err)
	}
	if want := "NHRP " + nbmaB.String() + " " + hexOf("registration"); line != want {
		t.Fatalf("spa got %q, want %q (the NAT's public address)", line, want)
	}
	if err := p.a.WriteNHRP(ctx, nbmaB, []byte("reply")); err != nil {
		t.Fatal(err)
	}
	if line, _, err = p.b.Proc.WaitFor(ctx, reNHRP, 0); err != nil {
		t.Fatal(err)
	}
	if want := "NHRP " + nbmaA.String() + " " + hexOf("reply"); line != want {
		t.Fatalf("spb got %q, want %q", line, want)
	}
}
