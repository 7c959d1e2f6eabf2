package bgp

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/internal/leakcheck"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// These tests run only our own speakers (hubs and spokes, each a
// Controller on GoBGP) on loopback addresses: the designs the
// configuration offers, end to end through real sessions.

// ourNode is one of our nodes on GoBGP: its controller, the kernel routes
// it wrote and the NHRP state it reads.
type ourNode struct {
	c    *Controller
	sink *fakeSink
	nh   *fakeNHRP
	// stop ends the node as dmvpnd's stop does (gracefully when graceful
	// restart is configured); it is also run when the test ends.
	stop func()
}

// runOurNode starts a controller on GoBGP; sink may hold a previous run's
// kernel routes.
func runOurNode(t *testing.T, cfg Config, nh *fakeNHRP, sink *fakeSink) *ourNode {
	t.Helper()
	if sink == nil {
		sink = &fakeSink{}
	}
	c, err := NewController(cfg, Deps{Speaker: NewGoBGP(zap.NewNop()), Routes: sink, NHRP: nh})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	n := &ourNode{c: c, sink: sink, nh: nh}
	stopped := false
	n.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run of %s: %v", cfg.Tunnel.Addr(), err)
		}
	}
	t.Cleanup(n.stop)
	<-c.Started()
	return n
}

// testTimers are session timers short enough for a test.
func testTimers(cfg Config, port int) Config {
	cfg.Port, cfg.Keepalive, cfg.Hold, cfg.ConnectRetry = port, 3*time.Second, 9*time.Second, time.Second
	return cfg
}

// ourHub starts a hub at addr that peers with the other hubs and announces
// summary to spokes (phase 3) unless phase2.
func ourHub(t *testing.T, addr netip.Addr, port int, mode Mode, phase2 bool, hubs []netip.Addr, sink *fakeSink, more func(*Config)) *ourNode {
	t.Helper()
	cfg := testTimers(Config{Role: RoleHub, Mode: mode, Tunnel: netip.PrefixFrom(addr, 24), UseCertificates: true,
		Summary: []netip.Prefix{pfx("10.0.0.0/8")}, Phase2: phase2, Hubs: hubs}, port)
	if more != nil {
		more(&cfg)
	}
	return runOurNode(t, cfg, &fakeNHRP{}, sink)
}

// ourSpoke starts a spoke at addr, registered with (NHS up at) servers,
// announcing nets.
func ourSpoke(t *testing.T, addr netip.Addr, port int, mode Mode, as uint32, servers []netip.Addr, more func(*Config), nets ...string) *ourNode {
	t.Helper()
	cfg := testTimers(Config{Role: RoleSpoke, Mode: mode, AS: as, Tunnel: netip.PrefixFrom(addr, 24)}, port)
	for _, n := range nets {
		cfg.Networks = append(cfg.Networks, pfx(n))
	}
	if more != nil {
		more(&cfg)
	}
	nh := &fakeNHRP{}
	for i, s := range servers {
		nh.servers = append(nh.servers, nhrp.NHSStatus{Proto: s, NBMA: netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)}), State: nhrp.NHSUp})
	}
	return runOurNode(t, cfg, nh, nil)
}

// register tells a hub that spoke registered from nbma with a certificate
// saying as and nets, as the engine would (its cache too, for the
// controller's periodic resync).
func (n *ourNode) register(spoke netip.Addr, nbma string, as uint32, nets ...string) {
	at := attrs(fmt.Sprint(as), nets...)
	n.nh.register(spoke.String(), nbma, at)
	n.c.Event(registered(spoke.String(), nbma, at))
}

// routesAre waits until the node's kernel routes are want.
func (n *ourNode) routesAre(t *testing.T, what string, d time.Duration, want []KernelRoute) {
	t.Helper()
	var got []KernelRoute
	if !waitUntil(d, func() bool { got = n.sink.get(); return cmp.Equal(got, want, cmpNet) }) {
		t.Fatalf("%s: kernel routes (-want +got):\n%s", what, cmp.Diff(want, got, cmpNet))
	}
}

// established reports whether the node's session with peer is up.
func (n *ourNode) established(peer netip.Addr) bool {
	st, ok := neighborStatus(n.c, peer)
	return ok && st.State == StateEstablished
}

func via(dst string, hops ...netip.Addr) KernelRoute {
	return KernelRoute{Dst: pfx(dst), NextHops: hops}
}

// TestOurSpeakersModesAndPhases runs a hub and two spokes of ours in each
// design the configuration offers: the Alpine guide's eBGP (spokes in
// their own AS) and iBGP with the hub as route reflector, each in phase 3
// (the spokes get the hub's summary, the hub every spoke's network) and in
// phase 2 (each spoke gets the other's network with the other spoke's
// tunnel address as next hop, so NHRP resolves it, and no summary).
func TestOurSpeakersModesAndPhases(t *testing.T) {
	leakcheck.Check(t, gobgpLeaks...)
	lo, port := loopbackNet(t)
	for i, tc := range []struct {
		name   string
		mode   Mode
		phase2 bool
		as     [2]uint32
	}{
		{"ebgp phase 3", ModeEBGP, false, [2]uint32{65001, 65002}},
		{"ebgp phase 2", ModeEBGP, true, [2]uint32{65001, 65002}},
		{"ibgp phase 3", ModeIBGP, false, [2]uint32{65000, 65000}},
		{"ibgp phase 2", ModeIBGP, true, [2]uint32{65000, 65000}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Each design on addresses of its own: .10-.12, .20-.22, ...
			base := lo.Addr().As4()
			base[3] = byte(10 * (i + 1))
			hubA := netip.AddrFrom4(base)
			s1, s2 := hubA.Next(), hubA.Next().Next()
			hub := ourHub(t, hubA, port, tc.mode, tc.phase2, nil, nil, nil)
			sp1 := ourSpoke(t, s1, port, tc.mode, tc.as[0], []netip.Addr{hubA}, nil, "10.1.0.0/24")
			sp2 := ourSpoke(t, s2, port, tc.mode, tc.as[1], []netip.Addr{hubA}, nil, "10.2.0.0/24")
			hub.register(s1, "198.51.100.1", tc.as[0], "10.1.0.0/16")
			hub.register(s2, "198.51.100.2", tc.as[1], "10.2.0.0/16")

			hub.routesAre(t, "the hub", 30*time.Second, []KernelRoute{via("10.1.0.0/24", s1), via("10.2.0.0/24", s2)})
			want1, want2 := []KernelRoute{via("10.0.0.0/8", hubA)}, []KernelRoute{via("10.0.0.0/8", hubA)}
			if tc.phase2 {
				want1, want2 = []KernelRoute{via("10.2.0.0/24", s2)}, []KernelRoute{via("10.1.0.0/24", s1)}
			}
			sp1.routesAre(t, "spoke 1", 30*time.Second, want1)
			sp2.routesAre(t, "spoke 2", 30*time.Second, want2)

			// The path as the spoke's RIB shows it: eBGP through the
			// hub's AS, iBGP reflected with the hub's local preference.
			rs, err := sp2.c.Routes(context.Background(), RouteQuery{Table: TableBest, Prefix: want2[0].Dst})
			if err != nil || len(rs) != 1 {
				t.Fatalf("spoke 2's RIB for %s: %v, %v", want2[0].Dst, rs, err)
			}
			wantPath := []uint32{65000}
			if tc.phase2 {
				wantPath = []uint32{65000, 65001}
			}
			if tc.mode == ModeIBGP {
				wantPath = []uint32{}
			}
			if d := cmp.Diff(wantPath, rs[0].ASPath); d != "" {
				t.Errorf("spoke 2's AS path to %s (-want +got):\n%s", want2[0].Dst, d)
			}
			if tc.mode == ModeIBGP && rs[0].LocalPref == 0 {
				t.Errorf("spoke 2's path to %s has no local preference: not iBGP", want2[0].Dst)
			}
			sp1.stop()
			sp2.stop()
			hub.stop()
		})
	}
}

// TestOurSpeakersECMP: a spoke of two hubs that both announce the summary
// installs one route through both with multipath on; with it off, it
// uses the hub with the lower router ID whichever came first, as every
// spoke does, so return traffic meets the same hub.
func TestOurSpeakersECMP(t *testing.T) {
	leakcheck.Check(t, gobgpLeaks...)
	lo, port := loopbackNet(t)
	for i, multipath := range []bool{true, false} {
		t.Run(fmt.Sprintf("multipath=%v", multipath), func(t *testing.T) {
			base := lo.Addr().As4()
			base[3] = byte(100 + 10*i)
			hub1 := netip.AddrFrom4(base)
			spokeA, hub2 := hub1.Next(), hub1.Next().Next()
			sp := ourSpoke(t, spokeA, port, ModeEBGP, 65001, []netip.Addr{hub1, hub2},
				func(c *Config) { c.Multipath = multipath }, "10.1.0.0/24")
			// The hub with the higher router ID first: its route is in
			// the kernel before the other hub exists.
			h2 := ourHub(t, hub2, port, ModeEBGP, false, []netip.Addr{hub1}, nil, nil)
			h2.register(spokeA, "198.51.100.1", 65001, "10.1.0.0/16")
			sp.routesAre(t, "through the first hub", 30*time.Second, []KernelRoute{via("10.0.0.0/8", hub2)})
			h1 := ourHub(t, hub1, port, ModeEBGP, false, []netip.Addr{hub2}, nil, nil)
			h1.register(spokeA, "198.51.100.1", 65001, "10.1.0.0/16")
			want := []KernelRoute{via("10.0.0.0/8", hub1)}
			if multipath {
				want = []KernelRoute{via("10.0.0.0/8", hub1, hub2)}
			}
			sp.routesAre(t, "with both hubs", 30*time.Second, want)
			// Each hub has the spoke's network through the spoke, not
			// through the other hub.
			h1.routesAre(t, "hub 1", 30*time.Second, []KernelRoute{via("10.1.0.0/24", spokeA)})
			h2.routesAre(t, "hub 2", 30*time.Second, []KernelRoute{via("10.1.0.0/24", spokeA)})
			sp.stop()
			h1.stop()
			h2.stop()
		})
	}
}

// TestOurSpeakersGracefulRestart restarts a hub of ours under a spoke of
// ours. With graceful restart the spoke keeps the hub's routes in its
// kernel through the restart, the restarted hub keeps the spoke's routes
// its previous run left in the kernel, and neither ever writes a route set
// without them; with the hub only a helper (its forwarding does not
// survive dmvpnd), the spoke drops its routes at once.
func TestOurSpeakersGracefulRestart(t *testing.T) {
	leakcheck.Check(t, gobgpLeaks...)
	lo, port := loopbackNet(t)
	for i, helperOnly := range []bool{false, true} {
		t.Run(fmt.Sprintf("helper-only=%v", helperOnly), func(t *testing.T) {
			base := lo.Addr().As4()
			base[3] = byte(150 + 10*i)
			hubA := netip.AddrFrom4(base)
			spokeA := hubA.Next()
			gr := func(c *Config) { c.RestartTime = 60 * time.Second; c.HelperOnly = helperOnly }
			hubSink := &fakeSink{}
			hub := ourHub(t, hubA, port, ModeEBGP, false, nil, hubSink, gr)
			sp := ourSpoke(t, spokeA, port, ModeEBGP, 65001, []netip.Addr{hubA},
				func(c *Config) { c.RestartTime = 60 * time.Second }, "10.1.0.0/24")
			hub.register(spokeA, "198.51.100.1", 65001, "10.1.0.0/16")
			summary, lan := []KernelRoute{via("10.0.0.0/8", hubA)}, []KernelRoute{via("10.1.0.0/24", spokeA)}
			sp.routesAre(t, "the spoke", 30*time.Second, summary)
			hub.routesAre(t, "the hub", 30*time.Second, lan)
			if !waitUntil(10*time.Second, func() bool { return sp.established(hubA) }) {
				t.Fatal("the spoke's session is not established")
			}

			spokeMark, hubMark := sp.sink.mark(), hubSink.mark()
			hub.stop()
			// The spoke sees the session go: it would see the routes go.
			if !waitUntil(20*time.Second, func() bool { return !sp.established(hubA) }) {
				t.Fatal("the spoke never saw the hub's session go")
			}
			if helperOnly {
				sp.routesAre(t, "the spoke, its hub gone without asking it to keep its routes", 5*time.Second, nil)
				return
			}
			rs, err := sp.c.Routes(context.Background(), RouteQuery{Table: TableBest, Prefix: pfx("10.0.0.0/8")})
			if err != nil || len(rs) != 1 || !rs[0].Stale {
				t.Errorf("the spoke's RIB during the hub's restart: %+v, %v; want one stale path", rs, err)
			}

			// The hub comes back (its registrations restored, as dmvpnd's
			// state file does) with the kernel routes its first run left.
			hub = ourHub(t, hubA, port, ModeEBGP, false, nil, hubSink, gr)
			hub.register(spokeA, "198.51.100.1", 65001, "10.1.0.0/16")
			if !waitUntil(30*time.Second, func() bool { return sp.established(hubA) && hub.established(spokeA) }) {
				t.Fatal("the sessions did not come back")
			}
			// The spoke's path is refreshed (no longer stale) once the hub
			// sent it again.
			if !waitUntil(30*time.Second, func() bool {
				rs, err := sp.c.Routes(context.Background(), RouteQuery{Table: TableBest, Prefix: pfx("10.0.0.0/8")})
				return err == nil && len(rs) == 1 && !rs[0].Stale
			}) {
				t.Error("the spoke's path to the summary stayed stale after the hub came back")
			}
			sp.routesAre(t, "the spoke after the restart", 10*time.Second, summary)
			hub.routesAre(t, "the hub after the restart", 10*time.Second, lan)
			if rs, lost := sp.sink.lacking(spokeMark, pfx("10.0.0.0/8")); lost {
				t.Errorf("the spoke wrote routes without the hub's summary during the restart: %v", rs)
			}
			if rs, lost := hubSink.lacking(hubMark, pfx("10.1.0.0/24")); lost {
				t.Errorf("the hub wrote routes without the spoke's network across its restart: %v", rs)
			}
			sp.stop()
			hub.stop()
		})
	}
}
