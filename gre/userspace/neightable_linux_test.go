package userspace

import (
	"math/rand/v2"
	"net/netip"
	"testing"
)

// TestNeighTable checks the table against a plain map over random
// operations, and that every change moves the generation.
func TestNeighTable(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	var tab neighTable
	model := map[netip.Addr]*neighbor{}
	for i := 0; i < 20000; i++ {
		a := netip.AddrFrom4([4]byte{10, 0, byte(rng.IntN(8)), byte(rng.IntN(256))})
		gen := tab.generation()
		switch rng.IntN(3) {
		case 0, 1:
			nb := &neighbor{}
			prev := tab.set(a, nb)
			if prev != model[a] {
				t.Fatalf("set %s returned %p, model %p", a, prev, model[a])
			}
			model[a] = nb
			if tab.generation() == gen {
				t.Fatal("set did not change the generation")
			}
		case 2:
			_, had := model[a]
			if got := tab.del(a); got != had {
				t.Fatalf("del %s = %v, model %v", a, got, had)
			}
			delete(model, a)
			if had == (tab.generation() == gen) {
				t.Fatal("del changed the generation wrongly")
			}
		}
		if tab.get(a) != model[a] {
			t.Fatalf("get %s disagrees with the model", a)
		}
	}
	if all := tab.all(); len(all) != len(model) || int(tab.n.Load()) != len(model) {
		t.Fatalf("%d entries (count %d), model %d", len(all), tab.n.Load(), len(model))
	}
}

// BenchmarkNeighTableSet adds 10,000 entries: a hub's registrations.
func BenchmarkNeighTableSet(b *testing.B) {
	for b.Loop() {
		var tab neighTable
		for i := 0; i < 10000; i++ {
			tab.set(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), &neighbor{})
		}
	}
}

// BenchmarkNeighTableSet100k adds 100,000 entries: a hub at scale.
func BenchmarkNeighTableSet100k(b *testing.B) {
	for b.Loop() {
		var tab neighTable
		for i := 0; i < 100000; i++ {
			tab.set(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), &neighbor{})
		}
	}
}
