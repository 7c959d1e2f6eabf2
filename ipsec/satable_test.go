package ipsec

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/strongswan/govici/vici"
	"go.uber.org/zap"
)

// TestSATableIndexes applies a seeded random sequence of puts and
// deletes and checks, after each, that the indexes answer as a scan of
// every SA would, and that the alias plan from the claimants alone is the
// plan from every SA.
func TestSATableIndexes(t *testing.T) {
	rng := rand.New(rand.NewPCG(18, 1000))
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	host := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 51, 100, byte(1 + i)}) }
	tb := newSATable()
	all := map[string]SA{}
	for step := range 3000 {
		id := fmt.Sprint(rng.IntN(40))
		if rng.IntN(4) == 0 {
			tb.del(id)
			delete(all, id)
		} else {
			h := host(rng.IntN(12))
			var ts string
			switch rng.IntN(5) {
			case 0: // behind NAT
				ts = fmt.Sprintf("172.31.0.%d/32[gre]", 1+rng.IntN(6))
			case 1: // claims another peer's NBMA address
				ts = host(rng.IntN(12)).String() + "/32[gre]"
			case 2:
				ts = "0.0.0.0/0[gre]"
			default:
				ts = h.String() + "/32[gre]"
			}
			state := []string{"INSTALLED", "INSTALLED", "REKEYED", "INSTALLING"}[rng.IntN(4)]
			ike := []string{"ESTABLISHED", "ESTABLISHED", "CONNECTING"}[rng.IntN(3)]
			sa := SA{IKEID: id, State: ike, RemoteHost: h, Established: t0.Add(time.Duration(step) * time.Second),
				Children: []ChildSA{{ID: id, State: state, RemoteTS: []string{ts}}}}
			tb.put(sa)
			all[id] = sa
		}
		if tb.len() != len(all) {
			t.Fatalf("step %d: %d SAs in the table, want %d", step, tb.len(), len(all))
		}
		for i := range 12 {
			h := host(i)
			var want []string
			up := false
			for _, sa := range all {
				if sa.RemoteHost == h {
					want = append(want, sa.IKEID)
					up = up || sa.Up()
				}
			}
			var got []string
			for _, sa := range tb.to(h) {
				got = append(got, sa.IKEID)
			}
			slices.Sort(want)
			slices.Sort(got)
			if d := cmp.Diff(want, got); d != "" || tb.up(h) != up {
				t.Fatalf("step %d: SAs to %v (-want +got):\n%s; up %v, want %v", step, h, d, tb.up(h), up)
			}
		}
		var every []SA
		for _, sa := range all {
			every = append(every, sa)
		}
		wantAliases, wantBad := planAliases(every)
		gotAliases, gotBad := planClaims(tb.claimants(), tb.up)
		// Every SA came up at its own instant: the plan is decided.
		if d := cmp.Diff(wantAliases, gotAliases, cmp.Comparer(func(x, y netip.Addr) bool { return x == y })); d != "" {
			t.Fatalf("step %d: aliases from the claimants (-every SA +claimants):\n%s", step, d)
		}
		if d := cmp.Diff(wantBad, gotBad); d != "" {
			t.Fatalf("step %d: refused SAs from the claimants (-every SA +claimants):\n%s", step, d)
		}
	}
}

// TestAliasDirty: a change to an SA that neither claims an alias nor is
// claimed leaves the plan alone; one that claims, or that owns a claimed
// address, marks it.
func TestAliasDirty(t *testing.T) {
	a := netip.MustParseAddr
	sa := func(id, remote, ts string) SA {
		return SA{IKEID: id, State: "ESTABLISHED", RemoteHost: a(remote), Children: []ChildSA{{ID: id, State: "INSTALLED", RemoteTS: []string{ts + "[gre]"}}}}
	}
	tb := newSATable()
	tb.aliasDirty = false
	tb.put(sa("1", "198.51.100.1", "198.51.100.1/32"))
	if tb.aliasDirty {
		t.Error("an SA whose selector is its own address marked the alias plan")
	}
	tb.put(sa("2", "203.0.113.1", "198.51.100.9/32"))
	if !tb.aliasDirty {
		t.Error("an SA behind NAT did not mark the alias plan")
	}
	tb.aliasDirty = false
	tb.put(sa("3", "198.51.100.9", "198.51.100.9/32"))
	if !tb.aliasDirty {
		t.Error("the owner of an address another SA claims did not mark the alias plan")
	}
	tb.aliasDirty = false
	tb.del("1")
	if tb.aliasDirty {
		t.Error("deleting an SA nobody claims marked the alias plan")
	}
	tb.del("2")
	if !tb.aliasDirty || len(tb.claims) != 0 || len(tb.inners) != 0 {
		t.Errorf("deleting the SA behind NAT: dirty %v, claims %v, inners %v", tb.aliasDirty, tb.claims, tb.inners)
	}
}

// BenchmarkSAEvent is the manager's work for one SA's child-updown (up)
// event and its down event with many SAs in the table: it must not grow
// with their number.
func BenchmarkSAEvent(b *testing.B) {
	for _, n := range []int{1000, 100000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			var aliases int
			m := &Manager{mode: ModeUserspace, log: zap.NewNop(), sas: newSATable(), waiters: map[netip.Addr][]chan struct{}{},
				hooks: Hooks{Aliases: func(map[netip.Addr]netip.Addr) error { aliases++; return nil }}}
			m.stats.init()
			for i := range n {
				h := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
				m.sas.put(SA{IKEID: fmt.Sprint(i), State: "ESTABLISHED", RemoteHost: h, Initiator: false,
					Children: []ChildSA{{ID: fmt.Sprint(i), State: "INSTALLED", RemoteTS: []string{h.String() + "/32[gre]"}}}})
			}
			ev := func(up bool) vici.Event {
				ike := msg("uniqueid", "x", "state", "ESTABLISHED", "local-host", "192.0.2.1", "remote-host", "203.0.113.7")
				ike.Set("child-sas", msg("gre-1", msg("name", "gre", "uniqueid", "y", "state", "INSTALLED", "remote-ts", []string{"203.0.113.7/32[gre]"})))
				m := msg("spoke", ike)
				if up {
					m.Set("up", "yes")
				}
				return vici.Event{Name: "child-updown", Message: m}
			}
			upEv, downEv := ev(true), ev(false)
			ctx := context.Background()
			m.handleEvent(ctx, upEv)
			b.ResetTimer()
			for b.Loop() {
				m.handleEvent(ctx, downEv)
				m.handleEvent(ctx, upEv)
			}
		})
	}
}
