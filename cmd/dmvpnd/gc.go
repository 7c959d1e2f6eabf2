package main

import (
	"os"
	"runtime/debug"
)

// gcPercent is dmvpnd's garbage collection target (GOGC) when the
// environment sets none: the heap may grow by half its live size between
// collections, not by all of it. A hub's heap is mostly its long-lived
// cache, so collections are rare in the steady state whichever the
// target, but a burst of registrations (100,000 spokes at once after a
// restart) grew the heap, and the resident memory the process keeps, to
// twice what it holds (bench-nhrp-scale: peak 462 → 324 MiB).
const gcPercent = 50

// setGC applies gcPercent unless GOGC is set.
func setGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
}
