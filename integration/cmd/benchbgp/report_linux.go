package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/opendmvpn/dmvpn/lab/testbed"
)

// memory returns the hub's resident memory (ours: the process; FRR: bgpd
// and zebra) and, for ours, its Go heap.
func memory(ctx context.Context, hub *testbed.Proc, f *frrHub) (int64, uint64, error) {
	if f != nil {
		return f.rss(), 0, nil
	}
	line, err := ask(ctx, hub, "MEM", `^MEM `)
	if err != nil {
		return 0, 0, err
	}
	var m memReport
	if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "MEM ")), &m); err != nil {
		return 0, 0, err
	}
	return m.RSS, m.Heap, nil
}

// row is one line of the report: ours, FRR's, the goal, and whether ours
// meets it.
type row struct {
	what, ours, frr, goal string
	missed                bool
}

// report prints the medians side by side and fails when one of ours
// misses its goal.
func report(o opts, ours, frrs []column, fails []time.Duration) error {
	dur := func(cs []column, f func(column) time.Duration) string {
		if len(cs) == 0 {
			return "—"
		}
		return fmtDur(time.Duration(median(cs, func(c column) float64 { return float64(f(c)) })))
	}
	num := func(cs []column, f func(column) float64, unit string) string {
		if len(cs) == 0 {
			return "—"
		}
		return fmt.Sprintf("%.0f%s", median(cs, f), unit)
	}
	over := func(f func(column) time.Duration, goal time.Duration) bool {
		return time.Duration(median(ours, func(c column) float64 { return float64(f(c)) })) > goal
	}
	oneEst := func(c column) time.Duration { return c.OneEstablished }
	oneRoutes := func(c column) time.Duration { return c.OneRoutes }
	withdraw := func(c column) time.Duration { return c.Withdraw }
	expiry := func(c column) time.Duration { return c.Expiry }
	allEst := func(c column) time.Duration { return c.AllEstablished }
	allRoutes := func(c column) time.Duration { return c.AllRoutes }
	fib := func(c column) float64 { return c.FIBRate }
	rows := []row{
		{what: "one spoke: registration → session established", ours: dur(ours, oneEst), frr: dur(frrs, oneEst)},
		{what: "one spoke: registration → its LAN routes in the hub's kernel", ours: dur(ours, oneRoutes), frr: dur(frrs, oneRoutes),
			goal: "≤ " + fmtDur(goalOne), missed: over(oneRoutes, goalOne)},
		{what: "withdrawal (UPDATE) → routes gone from the kernel", ours: dur(ours, withdraw), frr: dur(frrs, withdraw),
			goal: "≤ " + fmtDur(goalWithdraw), missed: over(withdraw, goalWithdraw)},
		{what: "registration expiry → routes gone from the kernel", ours: dur(ours, expiry), frr: "—",
			goal: "≤ " + fmtDur(goalWithdraw), missed: over(expiry, goalWithdraw)},
		{what: fmt.Sprintf("%d spokes at once: all sessions established", o.N), ours: dur(ours, allEst), frr: dur(frrs, allEst)},
		{what: fmt.Sprintf("%d spokes × %d prefixes: all routes in the kernel", o.N, o.Prefixes), ours: dur(ours, allRoutes), frr: dur(frrs, allRoutes),
			goal: "≤ " + fmtDur(goalAll), missed: over(allRoutes, goalAll)},
		{what: fmt.Sprintf("FIB: %d prefixes from one neighbour, per second in the kernel", o.Bulk), ours: num(ours, fib, "/s"), frr: num(frrs, fib, "/s"),
			goal: fmt.Sprintf("≥ %.0f/s", goalFIB), missed: median(ours, fib) < goalFIB},
		{what: "FIB alone: one host Set of 5,000 routes", ours: num(ours, func(c column) float64 { return c.FIBAlone }, "/s"), frr: "—"},
		{what: "memory per neighbour (RSS growth / N)", ours: num(ours, func(c column) float64 { return c.MemPerNeighbor / 1024 }, " KiB"),
			frr: num(frrs, func(c column) float64 { return c.MemPerNeighbor / 1024 }, " KiB")},
		{what: "  of which Go heap", ours: num(ours, func(c column) float64 { return c.HeapPerNeighbor / 1024 }, " KiB"), frr: "—"},
	}
	if len(fails) > 0 {
		m := time.Duration(median(fails, func(d time.Duration) float64 { return float64(d) }))
		rows = append(rows, row{what: "hub1 lost → spoke1's LAN reaches spoke2's through hub2 (lab)", ours: fmtDur(m), frr: "—",
			goal: "≤ " + fmtDur(goalFailover), missed: m > goalFailover})
	}
	oursName := "dmvpnd (GoBGP " + version("github.com/osrg/gobgp/v4") + ")"
	frrName := "FRR " + frrVersion() + " bgpd+zebra"
	if len(frrs) == 0 {
		frrName = "FRR (not run)"
	}
	fmt.Printf("\nBGP hub, %d simulated spokes × %d prefixes, medians of %d rounds (failover: %d):\n\n", o.N, o.Prefixes, o.Rounds, len(fails))
	fmt.Printf("  %-66s %-22s %-22s %s\n", "", oursName, frrName, "goal")
	var missed []string
	for _, r := range rows {
		mark := ""
		if r.goal != "" {
			mark = "  ok"
			if r.missed {
				mark = "  MISSED"
				missed = append(missed, r.what)
			}
		}
		fmt.Printf("  %-66s %-22s %-22s %s%s\n", r.what, r.ours, r.frr, r.goal, mark)
	}
	fmt.Println("\n  FRR: the spokes are dynamic neighbours of one peer group (bgp listen range), so \"registration\" is the spoke's first dial;")
	fmt.Println("  ours: the NHRP engine's registration event makes the spoke a neighbour with its certificate's AS and networks.")
	if len(missed) > 0 {
		return fmt.Errorf("goals missed: %s", strings.Join(missed, "; "))
	}
	return nil
}

// fmtDur prints a duration in ms below 10 s, else in s.
func fmtDur(d time.Duration) string {
	if d < 10*time.Second {
		return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.1f s", d.Seconds())
}
