package nhrp

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// TestSched runs random timers against a naive model: every timer not
// stopped fires once, in deadline order (ties in creation order).
func TestSched(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var s sched
	base := time.Unix(1000, 0)
	type want struct {
		when time.Time
		id   int
	}
	var wants []want
	var fired []int
	timers := map[int]*timer{}
	for id := 0; id < 2000; id++ {
		when := base.Add(time.Duration(rng.IntN(500)) * time.Millisecond)
		timers[id] = s.at(when, func() { fired = append(fired, id) })
		wants = append(wants, want{when, id})
	}
	stopped := map[int]bool{}
	for i := 0; i < 500; i++ {
		id := rng.IntN(2000)
		timers[id].Stop()
		timers[id].Stop() // twice is fine
		stopped[id] = true
	}
	for now := base; now.Before(base.Add(time.Second)); now = now.Add(7 * time.Millisecond) {
		s.runDue(now)
	}
	slices.SortStableFunc(wants, func(a, b want) int { return a.when.Compare(b.when) })
	var expect []int
	for _, w := range wants {
		if !stopped[w.id] {
			expect = append(expect, w.id)
		}
	}
	if !slices.Equal(fired, expect) {
		t.Fatalf("fired %d timers, model %d; first difference somewhere in %v vs %v", len(fired), len(expect), fired[:10], expect[:10])
	}
	if s.len() != 0 {
		t.Fatalf("%d timers left", s.len())
	}
}

// TestSchedStopDuringRun: a timer stopped by an earlier one due at the
// same time does not fire.
func TestSchedStopDuringRun(t *testing.T) {
	var s sched
	now := time.Unix(1, 0)
	var b *timer
	ran := false
	s.at(now, func() { b.Stop() })
	b = s.at(now, func() { ran = true })
	s.runDue(now)
	if ran {
		t.Fatal("stopped timer fired")
	}
}

// TestCacheLookup checks longest-prefix lookups against a naive scan.
func TestCacheLookup(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	c := newCache()
	var all []netip.Prefix
	for i := 0; i < 300; i++ {
		a := netip.AddrFrom4([4]byte{10, byte(rng.IntN(4)), byte(rng.IntN(256)), byte(rng.IntN(256))})
		p := netip.PrefixFrom(a, 8+rng.IntN(25)).Masked()
		c.put(&entry{typ: TypeCached, proto: p})
		all = append(all, p)
	}
	for i := 0; i < 5000; i++ {
		a := netip.AddrFrom4([4]byte{10, byte(rng.IntN(4)), byte(rng.IntN(256)), byte(rng.IntN(256))})
		var best netip.Prefix
		for _, p := range all {
			if p.Contains(a) && (!best.IsValid() || p.Bits() > best.Bits()) {
				best = p
			}
		}
		got := c.lookup(a, nil)
		if (got == nil) != !best.IsValid() || (got != nil && got.proto != best) {
			t.Fatalf("lookup %s: got %v, want %v", a, got, best)
		}
	}
	// Deleting keeps the per-length counts right.
	for _, p := range all {
		if e := c.get(p); e != nil {
			c.del(e)
		}
	}
	if len(c.m) != 0 || slices.ContainsFunc(c.lens4[:], func(n int) bool { return n != 0 }) {
		t.Fatal("counts left after deleting everything")
	}
}
