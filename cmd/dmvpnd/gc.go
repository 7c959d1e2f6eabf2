package main

import (
	"os"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// GC targets of dmvpnd when the environment sets no GOGC. A hub's heap is
// mostly its long-lived cache. Small (a few thousand spokes), the Go
// default serves: collections are cheap and the rate of registrations on
// the kernel data plane is what counts (the lower target cost about a
// quarter of it at 2,000 spokes, bench-nhrp-frr). Large, a burst of
// registrations (100,000 spokes at once after a restart) grew the heap,
// and the resident memory the process keeps, to twice what it holds
// (bench-nhrp-scale: peak 462 → 324 MiB with the lower target): above
// gcLargeHeap of live heap, the heap may grow by half its live size
// between collections, not by all of it.
const (
	gcPercentSmall = 100
	gcPercentLarge = 50
	gcLargeHeap    = 64 << 20
	gcCheckEvery   = time.Second
)

// setGC sets the GC target from the live heap, checked every
// gcCheckEvery by a goroutine that lives as long as the process, unless
// GOGC is set.
func setGC() {
	if os.Getenv("GOGC") != "" {
		return
	}
	pct := gcPercentSmall
	debug.SetGCPercent(pct)
	go func() {
		sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
		for range time.Tick(gcCheckEvery) {
			metrics.Read(sample)
			if sample[0].Value.Kind() != metrics.KindUint64 {
				return
			}
			if want := gcTarget(sample[0].Value.Uint64(), pct); want != pct {
				pct = want
				debug.SetGCPercent(pct)
			}
		}
	}()
}

// gcTarget is the GC target for a live heap of live bytes given the one
// in force: the lower one above gcLargeHeap, back to the default only
// below three quarters of it (no flapping around the threshold).
func gcTarget(live uint64, now int) int {
	switch {
	case live >= gcLargeHeap:
		return gcPercentLarge
	case live < gcLargeHeap*3/4:
		return gcPercentSmall
	}
	return now
}
