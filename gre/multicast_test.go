package gre

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestMulticastListUpdate: random changes leave the list equal to the set
// a naive model keeps, and a list read before a change never moves.
func TestMulticastListUpdate(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	addr := func() netip.Addr { return netip.AddrFrom4([4]byte{198, 51, 100, byte(rng.IntN(64))}) }
	var l MulticastList
	model := map[netip.Addr]bool{}
	l.Set([]netip.Addr{netip.MustParseAddr("198.51.100.1")})
	model[netip.MustParseAddr("198.51.100.1")] = true
	for round := range 500 {
		var add, rm []netip.Addr
		for range rng.IntN(5) {
			a := addr()
			rm = append(rm, a)
			delete(model, a)
		}
		for range rng.IntN(5) {
			a := addr()
			add = append(add, a)
			model[a] = true
		}
		before := slices.Clone(l.Load())
		held := l.Load()
		l.Update(add, rm)
		if !slices.Equal(before, held) {
			t.Fatalf("round %d: a list read before the change moved", round)
		}
		got := slices.SortedFunc(slices.Values(l.Load()), netip.Addr.Compare)
		var want []netip.Addr
		for a := range model {
			want = append(want, a)
		}
		slices.SortFunc(want, netip.Addr.Compare)
		if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
			t.Fatalf("round %d (-want +got):\n%s", round, diff)
		}
	}
}
