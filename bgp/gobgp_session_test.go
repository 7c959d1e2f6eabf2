package bgp

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/internal/leakcheck"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// startGoBGPHub runs a hub's controller on GoBGP on a loopback address
// until the test ends.
// loopbackHub is the configuration the two-speaker tests start a hub
// from: on a loopback network of its own (.1), with certificates, timers
// short enough for a test; spokeAddr (.2) is where its spoke speaks from.
func loopbackHub(t *testing.T) (cfg Config, hubAddr, spokeAddr netip.Addr, port int) {
	t.Helper()
	lo, port := loopbackNet(t)
	hubAddr = lo.Addr().Next()
	cfg = Config{Role: RoleHub, Tunnel: netip.PrefixFrom(hubAddr, 24), Port: port, UseCertificates: true,
		Keepalive: 3 * time.Second, Hold: 9 * time.Second, ConnectRetry: time.Second}
	return cfg, hubAddr, hubAddr.Next(), port
}

func startGoBGPHub(t *testing.T, cfg Config) (*Controller, *fakeSink) {
	t.Helper()
	sink := &fakeSink{}
	c, err := NewController(cfg, Deps{Speaker: NewGoBGP(zap.NewNop()), Routes: sink, NHRP: &fakeNHRP{}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	<-c.Started()
	return c, sink
}

// neighborStatus returns one neighbour's line of the summary.
func neighborStatus(c *Controller, a netip.Addr) (NeighborStatus, bool) {
	s, err := c.Summary(context.Background())
	if err != nil {
		return NeighborStatus{}, false
	}
	for _, n := range s.Neighbors {
		if n.Address == a {
			return n, true
		}
	}
	return NeighborStatus{}, false
}

// TestTwoSpeakersRenewal renews a spoke's certificate with fewer, more and
// other networks against real GoBGP: each time the kernel gets exactly
// what the new NET= allows of what the spoke sends, and the summary's
// accepted count says the same.
func TestTwoSpeakersRenewal(t *testing.T) {
	leakcheck.Check(t, gobgpLeaks...)
	cfg, hubAddr, spokeAddr, port := loopbackHub(t)
	c, sink := startGoBGPHub(t, cfg)
	rawSpeaker(t, 65001, spokeAddr, hubAddr, 65000, port, "10.1.0.0/24", "10.11.0.0/24", "10.12.0.0/24")

	for _, step := range []struct {
		what string
		nets []string
	}{
		{"first certificate", []string{"10.1.0.0/24", "10.11.0.0/24"}},
		{"renewed with fewer networks", []string{"10.11.0.0/24"}},
		{"renewed with more networks", []string{"10.11.0.0/24", "10.12.0.0/24"}},
		{"renewed with other networks", []string{"10.1.0.0/24"}},
	} {
		c.Event(registered(spokeAddr.String(), "198.51.100.1", attrs("65001", step.nets...)))
		var want []KernelRoute
		for _, n := range step.nets {
			want = append(want, KernelRoute{Dst: pfx(n), NextHops: []netip.Addr{spokeAddr}})
		}
		var last []KernelRoute
		var st NeighborStatus
		ok := waitUntil(20*time.Second, func() bool {
			last = sink.get()
			st, _ = neighborStatus(c, spokeAddr)
			return cmp.Equal(last, want, cmpopts.EquateComparable(netip.Prefix{}, netip.Addr{})) &&
				st.Received == 3 && st.Accepted == len(step.nets)
		})
		if !ok {
			t.Fatalf("%s (NET=%v): kernel routes %v, received %d accepted %d; want %v, 3 received, %d accepted",
				step.what, step.nets, last, st.Received, st.Accepted, want, len(step.nets))
		}
	}
}

// waitUntil polls cond until it holds (true) or d passes (false).
func waitUntil(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// TestTwoSpeakersHubNoPrefixLimit: another hub carries every spoke's
// routes; more of them than a spoke may send keeps its session up, and
// all of them reach the kernel.
func TestTwoSpeakersHubNoPrefixLimit(t *testing.T) {
	leakcheck.Check(t, gobgpLeaks...)
	lo, port := loopbackNet(t)
	otherHub := lo.Addr().Next()             // .1: dials (the higher address waits)
	hubAddr := otherHub.Next().Next().Next() // .4
	cfg := Config{Role: RoleHub, Tunnel: netip.PrefixFrom(hubAddr, 24), Port: port, MaxPrefixes: 3,
		Hubs: []netip.Addr{otherHub}, Keepalive: 3 * time.Second, Hold: 9 * time.Second, ConnectRetry: time.Second}
	c, sink := startGoBGPHub(t, cfg)
	var many []string
	for i := range 8 {
		many = append(many, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 0}), 24).String())
	}
	rawSpeaker(t, 65000, otherHub, hubAddr, 65000, port, many...)
	var st NeighborStatus
	if !waitUntil(20*time.Second, func() bool {
		st, _ = neighborStatus(c, otherHub)
		return st.State == StateEstablished && st.Accepted == len(many) && len(sink.get()) == len(many)
	}) {
		t.Fatalf("the other hub: %+v, %d kernel routes; want established with %d accepted and in the kernel", st, len(sink.get()), len(many))
	}
	// Established and every prefix installed: had the limit of 3 applied,
	// the session would have been shut down on the UPDATE carrying them.
	if st.PrefixLimit || st.Flaps != 0 {
		t.Errorf("the other hub's session: %+v", st)
	}
}

// TestTwoSpeakersClearPrefixLimit: a spoke shut down for sending more
// than the limit comes back with `clear ip bgp` once it sends fewer.
func TestTwoSpeakersClearPrefixLimit(t *testing.T) {
	leakcheck.Check(t, gobgpLeaks...)
	cfg, hubAddr, spokeAddr, port := loopbackHub(t)
	cfg.MaxPrefixes = 3
	c, sink := startGoBGPHub(t, cfg)
	c.Event(registered(spokeAddr.String(), "198.51.100.1", attrs("65001", "10.1.0.0/16")))
	waitFor(t, "the spoke a neighbour", 5*time.Second, func() bool { _, ok := neighborStatus(c, spokeAddr); return ok })
	spoke := rawSpeaker(t, 65001, spokeAddr, hubAddr, 65000, port, "10.1.1.0/24", "10.1.2.0/24", "10.1.3.0/24", "10.1.4.0/24")
	waitFor(t, "the spoke shut down for the prefix limit", 20*time.Second, func() bool {
		st, _ := neighborStatus(c, spokeAddr)
		return st.PrefixLimit && st.State == StateIdle
	})
	// The spoke withdraws one: still held down until cleared.
	nlri, _ := bgp.NewIPAddrPrefix(pfx("10.1.4.0/24"))
	nh, _ := bgp.NewPathAttributeNextHop(spokeAddr)
	if err := spoke.DeletePath(apiutil.DeletePathRequest{Paths: []*apiutil.Path{{Family: bgp.RF_IPv4_UC, Nlri: nlri,
		Attrs: []bgp.PathAttributeInterface{bgp.NewPathAttributeOrigin(0), nh}}}}); err != nil {
		t.Fatal(err)
	}
	n, err := c.Clear(context.Background(), spokeAddr, false)
	if err != nil || n != 1 {
		t.Fatalf("Clear = %d, %v; want 1 session cleared", n, err)
	}
	var st NeighborStatus
	if !waitUntil(20*time.Second, func() bool {
		st, _ = neighborStatus(c, spokeAddr)
		return st.State == StateEstablished && st.Accepted == 3 && len(sink.get()) == 3
	}) {
		t.Fatalf("after clear: %+v, kernel %v; want established with 3 routes", st, sink.get())
	}
	if st.PrefixLimit || st.LastError != "" {
		t.Errorf("after clear the session still says %+v", st)
	}
}

// TestGoBGPRoutesLongestMatch: an address selects the paths of the
// longest prefix that contains it (vtysh's `show ip bgp ADDRESS`), a
// prefix only its own.
func TestGoBGPRoutesLongestMatch(t *testing.T) {
	leakcheck.Check(t, gobgpLeaks...)
	lo, port := loopbackNet(t)
	cfg := Config{Role: RoleHub, Tunnel: netip.PrefixFrom(lo.Addr().Next(), 24), Port: port}.WithDefaults()
	g := NewGoBGP(zap.NewNop())
	ctx := context.Background()
	if err := g.Start(ctx, cfg, func(SpeakerEvent) {}); err != nil {
		t.Fatal(err)
	}
	defer g.Stop(ctx, false)
	if err := g.SetOrigin(ctx, []netip.Prefix{pfx("10.0.0.0/8"), pfx("10.1.0.0/16"), pfx("10.1.2.0/24")}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		q    RouteQuery
		want []string
	}{
		{RouteQuery{Address: addr("10.1.2.3")}, []string{"10.1.2.0/24"}},
		{RouteQuery{Address: addr("10.1.3.1")}, []string{"10.1.0.0/16"}},
		{RouteQuery{Address: addr("10.9.0.1")}, []string{"10.0.0.0/8"}},
		{RouteQuery{Address: addr("192.0.2.1")}, nil},
		{RouteQuery{Prefix: pfx("10.1.2.3/32")}, nil},
		{RouteQuery{Prefix: pfx("10.1.0.0/16")}, []string{"10.1.0.0/16"}},
	} {
		rs, err := g.Routes(ctx, tc.q)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, r := range rs {
			got = append(got, r.Prefix.String())
		}
		if !cmp.Equal(got, tc.want) {
			t.Errorf("Routes(%+v) = %v, want %v", tc.q, got, tc.want)
		}
	}
}

// TestTwoSpeakersLearnedNBMAProtected: a server's NBMA address learned at
// run time (named by DNS, not in the configuration) is protected like a
// configured one: a spoke's route covering it, accepted before, leaves
// the kernel and is shown refused.
func TestTwoSpeakersLearnedNBMAProtected(t *testing.T) {
	leakcheck.Check(t, gobgpLeaks...)
	cfg, hubAddr, spokeAddr, port := loopbackHub(t)
	c, sink := startGoBGPHub(t, cfg)
	c.Event(registered(spokeAddr.String(), "198.51.100.1", attrs("65001", "203.0.113.0/24", "10.1.0.0/24")))
	rawSpeaker(t, 65001, spokeAddr, hubAddr, 65000, port, "203.0.113.0/24", "10.1.0.0/24")
	waitFor(t, "both routes in the kernel", 20*time.Second, func() bool { return len(sink.get()) == 2 })

	c.Event(nhrp.Event{Kind: nhrp.EventNHSUp, Proto: pfx("172.31.0.1/32"), NBMA: addr("203.0.113.7")})
	want := []KernelRoute{{Dst: pfx("10.1.0.0/24"), NextHops: []netip.Addr{spokeAddr}}}
	waitFor(t, "the route covering the learned NBMA address withdrawn", 10*time.Second, func() bool {
		return cmp.Equal(sink.get(), want, cmpopts.EquateComparable(netip.Prefix{}, netip.Addr{}))
	})
	rs, err := c.Routes(context.Background(), RouteQuery{Table: TableReceived, Neighbor: spokeAddr})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.Prefix == pfx("203.0.113.0/24") && r.Why != "covers the NBMA address 203.0.113.7 of a hub" {
			t.Errorf("received 203.0.113.0/24: refused %v, why %q", r.Refused, r.Why)
		}
	}
	st, _ := neighborStatus(c, spokeAddr)
	if st.Accepted != 1 || st.State != StateEstablished {
		t.Errorf("the spoke's session: %+v; want established with 1 accepted", st)
	}
}

// TestTwoSpeakersNextHopIsThePeer: a spoke's routes go through the spoke,
// whatever NEXT_HOP it writes in them: another spoke's tunnel address (it
// would send its own LAN's traffic at that spoke), the hub's own (a loop)
// or an address outside the tunnel. The hub's kernel and its RIB (which
// phase 2 reflects with the next hop unchanged) name the spoke.
func TestTwoSpeakersNextHopIsThePeer(t *testing.T) {
	leakcheck.Check(t, gobgpLeaks...)
	cfg, hubAddr, spokeAddr, port := loopbackHub(t)
	victim := spokeAddr.Next()
	c, sink := startGoBGPHub(t, cfg)
	s := rawSpeaker(t, 65001, spokeAddr, hubAddr, 65000, port, "10.1.0.0/24")
	announceVia(t, s, victim, "10.1.1.0/24")
	announceVia(t, s, hubAddr, "10.1.2.0/24")
	announceVia(t, s, addr("203.0.113.9"), "10.1.3.0/24")
	c.Event(registered(spokeAddr.String(), "198.51.100.1", attrs("65001", "10.1.0.0/16")))

	var want []KernelRoute
	for _, n := range []string{"10.1.0.0/24", "10.1.1.0/24", "10.1.2.0/24", "10.1.3.0/24"} {
		want = append(want, KernelRoute{Dst: pfx(n), NextHops: []netip.Addr{spokeAddr}})
	}
	var got []KernelRoute
	if !waitUntil(20*time.Second, func() bool { got = sink.get(); return cmp.Equal(got, want, cmpNet) }) {
		t.Fatalf("kernel routes (-want +got):\n%s", cmp.Diff(want, got, cmpNet))
	}
	rs, err := c.Routes(context.Background(), RouteQuery{Table: TableBest})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.NextHop != spokeAddr {
			t.Errorf("the RIB has %s through %s, not through the spoke %s", r.Prefix, r.NextHop, spokeAddr)
		}
	}
}

// pathAttrs returns the path attributes of a raw speaker's best path to
// prefix, or nil.
func pathAttrs(s *server.BgpServer, prefix netip.Prefix) []bgp.PathAttributeInterface {
	var out []bgp.PathAttributeInterface
	_ = s.ListPath(apiutil.ListPathRequest{TableType: api.TableType_TABLE_TYPE_GLOBAL, Family: bgp.RF_IPv4_UC},
		func(n bgp.NLRI, paths []*apiutil.Path) {
			if p, ok := n.(*bgp.IPAddrPrefix); ok && p.Prefix == prefix && len(paths) > 0 {
				out = paths[0].Attrs
			}
		})
	return out
}

// TestTwoSpeakersSpokeAttributes: what one spoke sends reaches the other
// spokes (phase 2, here a raw speaker that shows what it got) without the
// attributes it could use to reach into their policy or the hub's choice:
// no communities (standard, extended, large), MED 0, LOCAL_PREF 100 over
// iBGP; and a spoke's route whose AS path names another AS (a spoke
// claiming to be a transit) is refused, shown refused with why, and not in
// the kernel, while its own AS prepended is accepted. In both designs.
func TestTwoSpeakersSpokeAttributes(t *testing.T) {
	leakcheck.Check(t, gobgpLeaks...)
	lo, port := loopbackNet(t)
	for i, mode := range []Mode{ModeEBGP, ModeIBGP} {
		t.Run(mode.String(), func(t *testing.T) {
			base := lo.Addr().As4()
			base[3] = byte(200 + 10*i)
			hubA := netip.AddrFrom4(base)
			a, b := hubA.Next(), hubA.Next().Next()
			asA, asB := uint32(65001), uint32(65002)
			if mode == ModeIBGP {
				asA, asB = 65000, 65000
			}
			hub := ourHub(t, hubA, port, mode, true, nil, nil, nil)
			hub.register(a, "198.51.100.1", asA, "10.1.0.0/16")
			hub.register(b, "198.51.100.2", asB, "10.2.0.0/16")

			sa := rawSpeaker(t, asA, a, hubA, 65000, port)
			sb := rawSpeaker(t, asB, b, hubA, 65000, port, "10.2.0.0/24")
			ext := bgp.NewTwoOctetAsSpecificExtended(bgp.EC_SUBTYPE_ROUTE_TARGET, 65002, 666, true)
			announceWith(t, sa, a, []bgp.PathAttributeInterface{
				bgp.NewPathAttributeCommunities([]uint32{0xFFFF0000, 0xFFFF029A, 65002<<16 | 666}), // graceful shutdown, blackhole, B's own
				bgp.NewPathAttributeExtendedCommunities([]bgp.ExtendedCommunityInterface{ext}),
				bgp.NewPathAttributeLargeCommunities([]*bgp.LargeCommunity{bgp.NewLargeCommunity(65002, 1, 2)}),
				bgp.NewPathAttributeMultiExitDisc(77), bgp.NewPathAttributeLocalPref(4000),
			}, "10.1.0.0/24")
			transit := bgp.NewPathAttributeAsPath([]bgp.AsPathParamInterface{bgp.NewAs4PathParam(bgp.BGP_ASPATH_ATTR_TYPE_SEQ, []uint32{65099})})
			announceWith(t, sa, a, []bgp.PathAttributeInterface{transit}, "10.1.1.0/24")
			want := []KernelRoute{via("10.1.0.0/24", a), via("10.2.0.0/24", b)}
			if mode == ModeEBGP {
				prepended := bgp.NewPathAttributeAsPath([]bgp.AsPathParamInterface{bgp.NewAs4PathParam(bgp.BGP_ASPATH_ATTR_TYPE_SEQ, []uint32{asA, asA})})
				announceWith(t, sa, a, []bgp.PathAttributeInterface{prepended}, "10.1.2.0/24")
				want = []KernelRoute{via("10.1.0.0/24", a), via("10.1.2.0/24", a), via("10.2.0.0/24", b)}
			}
			hub.routesAre(t, "the hub", 30*time.Second, want)

			var got []bgp.PathAttributeInterface
			if !waitUntil(30*time.Second, func() bool { got = pathAttrs(sb, pfx("10.1.0.0/24")); return got != nil }) {
				t.Fatal("spoke B never got 10.1.0.0/24")
			}
			for _, at := range got {
				switch at := at.(type) {
				case *bgp.PathAttributeCommunities, *bgp.PathAttributeExtendedCommunities, *bgp.PathAttributeLargeCommunities:
					t.Errorf("spoke B got spoke A's %T: %v", at, at)
				case *bgp.PathAttributeMultiExitDisc:
					if at.Value != 0 {
						t.Errorf("spoke B got spoke A's MED %d", at.Value)
					}
				case *bgp.PathAttributeLocalPref:
					if at.Value != 100 {
						t.Errorf("spoke B got LOCAL_PREF %d from spoke A's path", at.Value)
					}
				}
			}

			// The transit path: refused, shown with why.
			var rs []Route
			var err error
			if !waitUntil(10*time.Second, func() bool {
				rs, err = hub.c.Routes(context.Background(), RouteQuery{Table: TableReceived, Neighbor: a, Prefix: pfx("10.1.1.0/24")})
				return err == nil && len(rs) == 1
			}) {
				t.Fatalf("received-routes of spoke A for 10.1.1.0/24: %v, %v", rs, err)
			}
			if !rs[0].Refused || !strings.Contains(rs[0].Why, "65099") {
				t.Errorf("spoke A's transit path %v: refused %v, why %q; want refused naming AS 65099", rs[0].ASPath, rs[0].Refused, rs[0].Why)
			}
		})
	}
}
