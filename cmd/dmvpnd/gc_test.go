package main

import "testing"

// TestGCTarget: the lower GC target above gcLargeHeap of live heap, the
// default below three quarters of it, and in between whichever is in
// force.
func TestGCTarget(t *testing.T) {
	for _, c := range []struct {
		live      uint64
		now, want int
	}{
		{10 << 20, gcPercentSmall, gcPercentSmall},
		{gcLargeHeap, gcPercentSmall, gcPercentLarge},
		{gcLargeHeap * 7 / 8, gcPercentLarge, gcPercentLarge},
		{gcLargeHeap * 7 / 8, gcPercentSmall, gcPercentSmall},
		{gcLargeHeap / 2, gcPercentLarge, gcPercentSmall},
	} {
		if got := gcTarget(c.live, c.now); got != c.want {
			t.Errorf("gcTarget(%d MiB, %d) = %d, want %d", c.live>>20, c.now, got, c.want)
		}
	}
}
