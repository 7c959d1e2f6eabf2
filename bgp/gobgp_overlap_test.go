package bgp

import (
	"context"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/server"

	"github.com/opendmvpn/dmvpn/internal/leakcheck"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// overlapAddrs are a hub's and its spokes' addresses for the overlap
// tests: .base, .base+1, ...
func overlapAddrs(lo netip.Prefix, base byte, n int) []netip.Addr {
	b := lo.Addr().As4()
	out := make([]netip.Addr, n)
	for i := range out {
		b[3] = base + byte(i)
		out[i] = netip.AddrFrom4(b)
	}
	return out
}

// sentUpdates is how many UPDATEs a raw speaker sent on its one session.
func sentUpdates(s *server.BgpServer) uint64 {
	var n uint64
	_ = s.ListPeer(context.Background(), &api.ListPeerRequest{}, func(p *api.Peer) {
		n = p.GetState().GetMessages().GetSent().GetUpdate()
	})
	return n
}

// receivedRefusals returns what the hub shows of a neighbour's received routes:
// the refused ones with why.
func receivedRefusals(t *testing.T, c *Controller, a netip.Addr) (int, map[string]string) {
	t.Helper()
	rs, err := c.Routes(context.Background(), RouteQuery{Table: TableReceived, Neighbor: a})
	if err != nil {
		t.Fatal(err)
	}
	refused := map[string]string{}
	for _, r := range rs {
		if r.Refused {
			refused[r.Prefix.String()] = r.Why
		}
	}
	return len(rs), refused
}

// TestTwoSpeakersOverlap: spoke A's certificate says 10.0.0.0/16, spoke
// B's 10.0.5.0/24. A announcing 10.0.5.0/25 and 10.0.5.128/25 would take
// B's traffic at the hub by longest match: they are refused, shown refused
// with why, and the hub's kernel sends 10.0.5.0/24 to B; what of A's
// covers B's network or lies beside it is accepted. B's registration
// expiring lets A's routes in without A sending them again (soft reset).
func TestTwoSpeakersOverlap(t *testing.T) {
	leakcheck.Check(t, gobgpLeaks...)
	lo, port := loopbackNet(t)
	as := overlapAddrs(lo, 200, 3)
	hubA, a, b := as[0], as[1], as[2]
	hub := ourHub(t, hubA, port, ModeEBGP, false, nil, nil, nil)
	hub.register(a, "198.51.100.1", 65001, "10.0.0.0/16")
	hub.register(b, "198.51.100.2", 65002, "10.0.5.0/24")
	spA := rawSpeaker(t, 65001, a, hubA, 65000, port,
		"10.0.0.0/16", "10.0.4.0/23", "10.0.6.0/24", // its own, covering B's or beside it
		"10.0.5.0/24", "10.0.5.0/25", "10.0.5.128/25", "10.0.5.128/26") // B's
	rawSpeaker(t, 65002, b, hubA, 65000, port, "10.0.5.0/24")

	hub.routesAre(t, "the hub with both spokes", 30*time.Second, []KernelRoute{
		via("10.0.0.0/16", a), via("10.0.4.0/23", a), via("10.0.5.0/24", b), via("10.0.6.0/24", a)})
	const why = "inside 10.0.5.0/24, another spoke's more specific network"
	wantRefused := map[string]string{"10.0.5.0/24": why, "10.0.5.0/25": why, "10.0.5.128/25": why, "10.0.5.128/26": why}
	var n int
	var refused map[string]string
	if !waitUntil(10*time.Second, func() bool {
		n, refused = receivedRefusals(t, hub.c, a)
		return n == 7 && cmp.Equal(refused, wantRefused)
	}) {
		t.Fatalf("A's received routes: %d, refused (-want +got):\n%s", n, cmp.Diff(wantRefused, refused))
	}
	if n, refused := receivedRefusals(t, hub.c, b); n != 1 || len(refused) != 0 {
		t.Errorf("B's received routes: %d, refused %v; want its one route accepted", n, refused)
	}
	st, _ := neighborStatus(hub.c, a)
	if st.Accepted != 3 || st.Refused != 4 {
		t.Errorf("A's summary line: %d accepted, %d refused; want 3 and 4", st.Accepted, st.Refused)
	}
	if d := cmp.Diff([]netip.Prefix{pfx("10.0.5.0/24")}, st.Excluded, cmpNet); d != "" {
		t.Errorf("A's exclusions in show ip bgp neighbors (-want +got):\n%s", d)
	}

	// B's registration expires: A's routes are judged again, from what
	// the hub kept of them.
	sent := sentUpdates(spA)
	hub.nh.mu.Lock()
	hub.nh.cache = slices.DeleteFunc(hub.nh.cache, func(e nhrp.CacheEntry) bool { return e.Proto.Addr() == b })
	hub.nh.mu.Unlock()
	hub.c.Event(expired(b.String(), nhrp.CauseExpired))
	hub.routesAre(t, "the hub after B's registration expired", 30*time.Second, []KernelRoute{
		via("10.0.0.0/16", a), via("10.0.4.0/23", a), via("10.0.5.0/24", a), via("10.0.5.0/25", a),
		via("10.0.5.128/25", a), via("10.0.5.128/26", a), via("10.0.6.0/24", a)})
	if n, refused := receivedRefusals(t, hub.c, a); n != 7 || len(refused) != 0 {
		t.Errorf("A's received routes after B left: %d, refused %v; want 7 accepted", n, refused)
	}
	if now := sentUpdates(spA); now != sent {
		t.Errorf("A sent %d UPDATEs while it was re-filtered; want none (soft reset from the hub's Adj-RIB-In)", now-sent)
	}
}

// TestTwoSpeakersOverlapFilterAgreesWithRefusal: GoBGP's filter built from
// a spoke's networks less other spokes' (nested, longer than the limit,
// beside its own network inside another's, the same as another's) accepts
// exactly the prefixes Refusal accepts, over random prefixes around them
// (seeded) that the spoke really announces.
func TestTwoSpeakersOverlapFilterAgreesWithRefusal(t *testing.T) {
	leakcheck.Check(t, gobgpLeaks...)
	lo, port := loopbackNet(t)
	as := overlapAddrs(lo, 210, 6)
	hubA, a := as[0], as[1]
	hub := ourHub(t, hubA, port, ModeEBGP, false, nil, nil, func(c *Config) { c.MaxPrefixes = 1000 })
	hub.register(a, "198.51.100.1", 65001, "10.0.0.0/16", "10.0.66.0/24")
	hub.register(as[2], "198.51.100.2", 65002, "10.0.5.0/24")
	hub.register(as[3], "198.51.100.3", 65003, "10.0.64.0/20")
	hub.register(as[4], "198.51.100.4", 65004, "10.0.5.128/27")
	hub.register(as[5], "198.51.100.5", 65005, "10.0.0.0/16")
	wantEx := []netip.Prefix{pfx("10.0.5.0/24"), pfx("10.0.5.128/27"), pfx("10.0.64.0/20")}
	var nbr Neighbor
	if !waitUntil(10*time.Second, func() bool {
		hub.c.mu.Lock()
		nbr = hub.c.have[a]
		hub.c.mu.Unlock()
		return cmp.Equal(nbr.Excluded, wantEx, cmpNet)
	}) {
		t.Fatalf("A's exclusions %v, want %v", nbr.Excluded, wantEx)
	}

	r := rand.New(rand.NewPCG(17, 23))
	near := slices.Concat(nbr.Networks, wantEx, []netip.Prefix{pfx("10.1.0.0/16")})
	var announce []string
	want := map[netip.Prefix]bool{}
	for len(announce) < 400 {
		base := near[r.IntN(len(near))]
		p := randomInside(r, base, base.Bits()-2+r.IntN(10))
		if p.Bits() < 8 || slices.Contains(announce, p.String()) {
			continue
		}
		announce = append(announce, p.String())
		if hub.c.cfg.Refusal(nbr, p) == "" {
			want[p] = true
		}
	}
	if len(want) < 80 || len(announce)-len(want) < 80 {
		t.Fatalf("%d of %d prefixes accepted: the random prefixes do not exercise both", len(want), len(announce))
	}
	rawSpeaker(t, 65001, a, hubA, 65000, port, announce...)

	var got map[netip.Prefix]bool
	if !waitUntil(30*time.Second, func() bool {
		st, _ := neighborStatus(hub.c, a)
		if st.Received != len(announce) {
			return false
		}
		rs, err := hub.c.Routes(context.Background(), RouteQuery{Table: TableBest})
		if err != nil {
			return false
		}
		got = map[netip.Prefix]bool{}
		for _, r := range rs {
			if r.Peer == a {
				got[r.Prefix] = true
			}
		}
		return cmp.Equal(got, want, cmpNet)
	}) {
		t.Fatalf("GoBGP accepted (-Refusal +GoBGP):\n%s", cmp.Diff(want, got, cmpNet))
	}
}
