package bgp

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/opendmvpn/dmvpn/internal/bgptest"
	"github.com/opendmvpn/dmvpn/internal/leakcheck"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// The loopback network and raw GoBGP speakers of the test kit.
var (
	loopbackNet  = bgptest.LoopbackNet
	rawSpeaker   = bgptest.RawSpeaker
	announceVia  = bgptest.AnnounceVia
	announceWith = bgptest.AnnounceWith
)

// gobgpLeaks are goroutines GoBGP leaves behind after Stop, not ours: a
// peer's outgoing queue (newFSM's channels.NewInfiniteChannel,
// pkg/server/fsm.go:588 in v4.9.0), whose buffering goroutine exits only
// once its buffer is drained. When the FSM's loop ends with messages still
// queued, cleanInfiniteChannel (pkg/server/util.go:67-71) closes the input
// and drains the output without blocking (drainChannel, util.go:53-65,
// returns at the first empty read), so that goroutine stays blocked
// sending to an output nobody reads (eapache/channels#27; GoBGP's earlier
// fix of the same, osrg/gobgp#1171, drained until closed). Seen with
// GODEBUG=tracebackancestors: created by newPeer → newFSM under AddPeer.
var gobgpLeaks = []goleak.Option{goleak.IgnoreTopFunction("github.com/eapache/channels.(*InfiniteChannel).infiniteBuffer")}

// TestTwoSpeakersRefusals runs the hub's controller on GoBGP against real
// GoBGP spokes on loopback addresses: only what the certificate's NET=
// allows (up to /26) reaches the kernel; the default route, longer
// prefixes, prefixes outside NET=, covering a hub's NBMA address or
// overlapping the tunnel network are refused and audited with the
// certificate; a spoke in another AS than its certificate's never gets a
// session; one sending more than the limit is shut down.
func TestTwoSpeakersRefusals(t *testing.T) {
	leakcheck.Check(t, gobgpLeaks...)
	lo, port := loopbackNet(t)
	hubAddr := lo.Addr().Next() // .1
	spokeAddr := hubAddr.Next() // .2
	wrongAS := spokeAddr.Next() // .3
	greedy := wrongAS.Next()    // .4
	tunnel := netip.PrefixFrom(hubAddr, 24)
	cfg := Config{Role: RoleHub, Tunnel: tunnel, Port: port, UseCertificates: true, MaxPrefixes: 7,
		ProtectedNBMA: []netip.Addr{addr("192.0.2.1")}, Summary: []netip.Prefix{pfx("10.0.0.0/8")},
		Keepalive: 3 * time.Second, Hold: 9 * time.Second, ConnectRetry: time.Second}
	core, logs := observer.New(zap.InfoLevel)
	sink := &fakeSink{}
	nh := &fakeNHRP{}
	c, err := NewController(cfg, Deps{Speaker: NewGoBGP(zap.NewNop()), Routes: sink, NHRP: nh, Audit: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	<-c.Started()

	c.Event(registered(spokeAddr.String(), "198.51.100.1", attrs("65001", "10.1.0.0/24")))
	c.Event(registered(wrongAS.String(), "198.51.100.3", attrs("65003", "10.3.0.0/24")))
	c.Event(registered(greedy.String(), "198.51.100.4", attrs("65004", "10.4.0.0/16")))

	waitFor(t, "three neighbours", 5*time.Second, func() bool {
		s, err := c.Summary(ctx)
		return err == nil && len(s.Neighbors) == 3
	})
	spoke := rawSpeaker(t, 65001, spokeAddr, hubAddr, 65000, port,
		"10.1.0.0/24", "10.1.0.64/26", // inside NET=, up to /26: accepted
		"10.1.0.128/27", // longer than /26
		"10.9.0.0/24",   // outside NET=
		"0.0.0.0/0",     // the default route
		"192.0.2.0/24",  // covers a hub's NBMA address
		tunnel.String(), // the tunnel network
	)
	liar := rawSpeaker(t, 65099, wrongAS, hubAddr, 65000, port, "10.3.0.0/24")
	var many []string
	for i := range 8 {
		many = append(many, fmt.Sprintf("10.4.%d.0/24", i))
	}
	rawSpeaker(t, 65004, greedy, hubAddr, 65000, port, many...)

	want := []KernelRoute{
		{Dst: pfx("10.1.0.0/24"), NextHops: []netip.Addr{spokeAddr}},
		{Dst: pfx("10.1.0.64/26"), NextHops: []netip.Addr{spokeAddr}},
	}
	waitFor(t, "the spoke's accepted routes in the kernel", 20*time.Second, func() bool {
		return cmp.Equal(sink.get(), want, cmpopts.EquateComparable(netip.Prefix{}, netip.Addr{}))
	})

	refusedWhy := map[string]string{}
	waitFor(t, "five refusals audited", 10*time.Second, func() bool {
		for _, e := range logs.FilterMessage("bgp prefix refused").All() {
			refusedWhy[e.ContextMap()["prefix"].(string)] = e.ContextMap()["reason"].(string)
		}
		return len(refusedWhy) == 5
	})
	for _, e := range logs.FilterMessage("bgp prefix refused").All() {
		if got := e.ContextMap()["subject"]; got != "CN="+spokeAddr.String() {
			t.Errorf("refusal audited with subject %v, want the spoke's certificate", got)
		}
	}
	wantWhy := map[string]string{
		"10.1.0.128/27":          "longer than /26 inside 10.1.0.0/24",
		"10.9.0.0/24":            "outside the networks [10.1.0.0/24] the neighbour may announce",
		"0.0.0.0/0":              "the default route",
		"192.0.2.0/24":           "covers the NBMA address 192.0.2.1 of a hub",
		tunnel.Masked().String(): "overlaps the tunnel network " + tunnel.Masked().String(),
	}
	if d := cmp.Diff(wantWhy, refusedWhy); d != "" {
		t.Errorf("refusals (-want +got):\n%s", d)
	}

	// The spoke gets the hub's summary (phase 3), not its own routes back.
	waitFor(t, "the summary at the spoke", 10*time.Second, func() bool {
		var got []string
		_ = spoke.ListPath(apiutil.ListPathRequest{TableType: api.TableType_TABLE_TYPE_GLOBAL, Family: bgp.RF_IPv4_UC},
			func(p bgp.NLRI, paths []*apiutil.Path) {
				for _, x := range paths {
					if x.PeerAddress == hubAddr {
						got = append(got, p.String())
					}
				}
			})
		return slices.Equal(got, []string{"10.0.0.0/8"})
	})

	// The received table shows the refusals; the summary counts them.
	got, err := c.Routes(ctx, RouteQuery{Table: TableReceived, Neighbor: spokeAddr})
	if err != nil {
		t.Fatal(err)
	}
	var refused []string
	for _, r := range got {
		if r.Refused {
			refused = append(refused, r.Prefix.String())
		}
	}
	slices.Sort(refused)
	if len(got) != 7 || len(refused) != 5 {
		t.Errorf("received table: %d routes, refused %v; want 7 with 5 refused", len(got), refused)
	}

	// The spoke in the wrong AS is refused at OPEN; the greedy one is shut
	// down when it passes the limit.
	var last Summary
	defer func() {
		if t.Failed() {
			t.Logf("last summary: %+v", last)
		}
	}()
	waitFor(t, "the wrong-AS spoke refused at OPEN and the greedy one shut down", 20*time.Second, func() bool {
		s, err := c.Summary(ctx)
		last = s
		if err != nil {
			return false
		}
		var badAS, limit bool
		for _, n := range s.Neighbors {
			switch n.Address {
			case wrongAS:
				badAS = n.State != StateEstablished && n.UpdatesIn == 0 && notified(liar)
			case greedy:
				limit = n.PrefixLimit && n.State == StateIdle
			case spokeAddr:
				if n.Received != 7 || n.Accepted != 2 || n.Refused != 5 {
					return false
				}
			}
		}
		return badAS && limit
	})
	for _, r := range sink.get() {
		if r.NextHops[0] != spokeAddr {
			t.Errorf("kernel route %v from a refused neighbour", r)
		}
	}
}

// notified reports whether a raw speaker's one session received a
// NOTIFICATION and never got established.
func notified(s *server.BgpServer) bool {
	got := false
	_ = s.ListPeer(context.Background(), &api.ListPeerRequest{}, func(p *api.Peer) {
		m := p.GetState().GetMessages().GetReceived()
		got = m.GetOpen() > 0 && m.GetNotification() > 0 && p.GetState().GetFlops() == 0 &&
			p.GetState().GetSessionState() != api.PeerState_SESSION_STATE_ESTABLISHED
	})
	return got
}

// TestRefusalTable checks the refusal reasons on their own.
func TestRefusalTable(t *testing.T) {
	cfg := Config{Role: RoleHub, Tunnel: pfx("172.16.0.1/16"), ProtectedNBMA: []netip.Addr{addr("192.0.2.1")}}.WithDefaults()
	spoke := Neighbor{Kind: KindSpoke, Networks: []netip.Prefix{pfx("10.1.0.0/24"), pfx("10.5.0.0/28")}, MaxLen: 26}
	hub := Neighbor{Kind: KindHub}
	for _, tc := range []struct {
		n    Neighbor
		p    string
		want string
	}{
		{spoke, "10.1.0.0/24", ""},
		{spoke, "10.1.0.0/26", ""},
		{spoke, "10.1.0.0/27", "longer than /26 inside 10.1.0.0/24"},
		{spoke, "10.5.0.0/28", ""},
		{spoke, "10.5.0.0/29", "longer than /28 inside 10.5.0.0/28"},
		{spoke, "10.1.0.0/16", "outside the networks [10.1.0.0/24 10.5.0.0/28] the neighbour may announce"},
		{spoke, "0.0.0.0/0", "the default route"},
		{hub, "0.0.0.0/0", "the default route"},
		{hub, "192.0.0.0/8", "covers the NBMA address 192.0.2.1 of a hub"},
		{hub, "172.16.9.0/24", "overlaps the tunnel network 172.16.0.0/16"},
		{hub, "172.0.0.0/8", "overlaps the tunnel network 172.16.0.0/16"},
		{hub, "10.9.0.0/16", ""},
		{Neighbor{Kind: KindSpoke, MaxLen: 26}, "10.1.0.0/24", "the neighbour may announce no network"},
	} {
		if got := cfg.Refusal(tc.n, pfx(tc.p)); got != tc.want {
			t.Errorf("Refusal(%v, %s) = %q, want %q", tc.n.Kind, tc.p, got, tc.want)
		}
	}
}

var _ = nhrp.EventRegistered
