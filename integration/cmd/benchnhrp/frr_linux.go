package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/opendmvpn/dmvpn/integration/vm"
)

// The side-by-side benchmark (-frr): FRR 8.4's nhrpd and dmvpnd, each as
// the hub on the kernel data plane (ip_gre in a VM booted from Debian's
// kernel), one after the other in the same VM boot, registered by the
// same spoke simulator running natively on the host behind the VM's TAP.
//
//	host netns bnfN: TAP 198.51.100.1/24, spokes 198.18.0.0/15 (local)
//	   │  (QEMU virtio NIC)
//	VM eth0 198.51.100.2/24, gre1 key 42 10.0.0.1 — FRR or dmvpnd

// frrOpts are the side-by-side benchmark's settings.
type frrOpts struct {
	Sizes   []int
	Rounds  int
	Window  int
	Limits  bool   // also the runs where the kernel refuses neighbours
	Profile string // directory for a perf profile of each hub
	Dmvpnd  string
	// Baseline is another dmvpnd (an earlier build) measured as hub
	// "base" in each round beside ours, so a change is judged in one run.
	Baseline string
	CPUs     int
	Ceiling  bool // the null hub too, each round (frrnull_linux.go)
	// Clocksource, when set, is the guest kernel's clock source
	// (clocksource=, with tsc=reliable for tsc); Debian's kernel under
	// TCG picks hpet, whose every read is a system call and an emulated
	// device access.
	Clocksource string
	// Warm is how many spokes register before the clock starts (1: one;
	// at most warmMax).
	Warm int
	// KScale, when set, replaces the side-by-side runs with the scale
	// run: that many spokes register with dmvpnd alone (kscale_linux.go).
	KScale int
}

const (
	envFRROpts = "BENCHNHRP_FRR"
	frrTAP     = "bnftap0"
)

// runFRRBench is the host side: the namespace, the TAP, the VM (the
// guest agent) and the load generator in the namespace.
func runFRRBench(o frrOpts) error {
	if os.Geteuid() != 0 {
		return errors.New("the side-by-side benchmark needs root (namespaces, TAP, QEMU)")
	}
	for _, d := range []string{"zebra", "nhrpd"} {
		if _, err := os.Stat(filepath.Join("/usr/lib/frr", d)); err != nil {
			return fmt.Errorf("FRR is missing (scripts/install-deps.sh installs it): %w", err)
		}
	}
	if _, err := os.Stat(o.Dmvpnd); err != nil {
		return fmt.Errorf("dmvpnd: %w (make bench-nhrp-frr builds it)", err)
	}
	if o.Baseline != "" {
		if _, err := os.Stat(o.Baseline); err != nil {
			return fmt.Errorf("-baseline: %w", err)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := vm.Probe(ctx); err != nil {
		return fmt.Errorf("QEMU cannot start: %w", err)
	}
	k, err := vm.FindKernel()
	if err != nil {
		return err
	}
	cache, err := vm.CacheDir()
	if err != nil {
		return err
	}
	img, err := vm.Prepare(ctx, cache, k)
	if err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	ns := fmt.Sprintf("bnf%d", os.Getpid())
	if err := runAll([]string{"ip", "netns", "add", ns}); err != nil {
		return err
	}
	defer exec.Command("ip", "netns", "del", ns).Run()
	if err := vm.AddTAP(ctx, ns, frrTAP); err != nil {
		return err
	}
	if err := runAll(
		[]string{"ip", "-n", ns, "link", "set", "lo", "up"},
		[]string{"ip", "-n", ns, "addr", "add", hostAddr + "/24", "dev", frrTAP},
		[]string{"ip", "-n", ns, "route", "add", "local", "198.18.0.0/15", "dev", "lo"},
	); err != nil {
		return err
	}
	if o.Profile != "" {
		if err := os.MkdirAll(o.Profile, 0o755); err != nil {
			return err
		}
		o.Profile, _ = filepath.Abs(o.Profile)
	}
	ob, _ := json.Marshal(o)
	fmt.Printf("side by side on the kernel data plane: Debian kernel %s under QEMU TCG (%d vCPUs), spoke simulator on the host; FRR: %s\n",
		k.Version, o.CPUs, frrVersionLine())

	vmCtx, vmCancel := context.WithCancel(ctx)
	defer vmCancel()
	type vmDone struct {
		res *vm.Result
		err error
	}
	vmc := make(chan vmDone, 1)
	go func() {
		mem := 2048
		if o.KScale > 0 {
			// dmvpnd's few KiB and the kernel's neighbour entry per
			// spoke, the guest's tmpfs overlay and page cache.
			mem = max(mem, 1024+o.KScale/100*2)
		}
		cfg := vm.Config{NetNS: ns, NICs: []vm.NIC{{TAP: frrTAP}}, CPUs: o.CPUs, Memory: mem, Timeout: 3 * time.Hour,
			Env: []string{envRole + "=frrguest", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"}}
		if o.Profile != "" {
			cfg.Shares = []string{o.Profile}
		}
		if o.Clocksource != "" {
			cfg.KernelArgs = []string{"clocksource=" + o.Clocksource}
			if o.Clocksource == "tsc" {
				cfg.KernelArgs = append(cfg.KernelArgs, "tsc=reliable")
			}
		}
		res, err := img.Run(vmCtx, cfg, exe)
		vmc <- vmDone{res, err}
	}()

	load := exec.CommandContext(ctx, "ip", "netns", "exec", ns, exe)
	load.Env = append(os.Environ(), envRole+"=frrload", envFRROpts+"="+string(ob))
	load.Stdout, load.Stderr = os.Stdout, os.Stderr
	loadErr := load.Run()
	var vr vmDone
	select {
	case vr = <-vmc:
	case <-time.After(2 * time.Minute):
		vmCancel()
		vr = <-vmc
	}
	if loadErr != nil || vr.err != nil || (vr.res != nil && vr.res.ExitCode != 0) {
		if vr.res != nil {
			fmt.Fprintf(os.Stderr, "guest output:\n%s\n", vr.res.Output)
		}
		return errors.Join(loadErr, vr.err)
	}
	return nil
}

func frrVersionLine() string {
	out, _ := exec.Command("/usr/lib/frr/nhrpd", "--version").CombinedOutput()
	l, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(l)
}

// agent is the load generator's connection to the guest.
type agent struct {
	c  net.Conn
	sc *bufio.Scanner
}

func dialAgent(d time.Duration) (*agent, error) {
	deadline := time.Now().Add(d)
	for {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(guestAddr, strconv.Itoa(agentPort)), 2*time.Second)
		if err == nil {
			sc := bufio.NewScanner(c)
			sc.Buffer(make([]byte, 1<<20), 16<<20)
			return &agent{c: c, sc: sc}, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the guest agent did not answer: %w", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func (a *agent) do(o order) (answer, error) {
	b, _ := json.Marshal(o)
	if _, err := a.c.Write(append(b, '\n')); err != nil {
		return answer{}, err
	}
	if !a.sc.Scan() {
		return answer{}, fmt.Errorf("guest agent: connection lost: %v", a.sc.Err())
	}
	var ans answer
	if err := json.Unmarshal(a.sc.Bytes(), &ans); err != nil {
		return answer{}, err
	}
	if ans.Err != "" {
		return ans, fmt.Errorf("guest: %s %s: %s", o.Op, o.Impl, ans.Err)
	}
	return ans, nil
}

// frrRun is one hub's run.
type frrRun struct {
	Impl   string
	N      int
	Stats  regStats
	Before answer
	After  answer
}

// mainRSS is the RSS growth of the process holding the registrations,
// and of all the hub's processes, per answered spoke (bytes).
func (r frrRun) perSpoke() (main, all float64) {
	if r.Stats.Answered == 0 {
		return 0, 0
	}
	name := map[string]string{"frr": "nhrpd", "ours": "dmvpnd", "base": "dmvpnd", "null": "nullhub"}[r.Impl]
	var tb, ta int64
	for k, v := range r.After.RSS {
		ta += v
		tb += r.Before.RSS[k]
	}
	n := float64(r.Stats.Answered)
	return float64(r.After.RSS[name]-r.Before.RSS[name]) / n, float64(ta-tb) / n
}

// cpuPerReg is the hub's CPU time per answered registration.
func (r frrRun) cpuPerReg() time.Duration {
	if r.Stats.Answered == 0 {
		return 0
	}
	var d time.Duration
	for k, v := range r.After.CPU {
		d += v - r.Before.CPU[k]
	}
	return d / time.Duration(r.Stats.Answered)
}

// runFRRLoad is the load generator child, in the host namespace.
func runFRRLoad() int {
	var o frrOpts
	if err := json.Unmarshal([]byte(os.Getenv(envFRROpts)), &o); err != nil {
		fmt.Println("FATAL", err)
		return 1
	}
	if err := frrLoad(o); err != nil {
		fmt.Println("FATAL", err)
		return 1
	}
	return 0
}

func frrLoad(o frrOpts) error {
	a, err := dialAgent(5 * time.Minute)
	if err != nil {
		return err
	}
	defer func() { a.do(order{Op: "exit"}) }()
	if m, err := a.do(order{Op: "measure"}); err == nil {
		fmt.Printf("guest clock source: %s\n", m.Clock)
	}
	g, err := newLoadgen(netip.MustParseAddr(guestAddr), hubProto, greKey)
	if err != nil {
		return err
	}
	defer g.close()
	if o.KScale > 0 {
		return kscaleLoad(a, g, o)
	}
	runID := uint32(0)
	one := func(impl string, n int, lim *order, profile bool) (frrRun, error) {
		runID++
		r := frrRun{Impl: impl, N: n}
		bin := o.Dmvpnd
		if impl == "base" {
			bin = o.Baseline
		}
		if _, err := a.do(order{Op: "start", Impl: impl, Spokes: n, Dmvpnd: bin}); err != nil {
			return r, err
		}
		defer a.do(order{Op: "stop"})
		// The hub answers one spoke before the clock starts.
		w, err := g.register(warmOpts(o.Warm, runID<<20))
		if err != nil || w.Answered != w.N {
			return r, fmt.Errorf("%s did not answer the first registrations (%d of %d): %v", impl, w.Answered, w.N, err)
		}
		if lim != nil {
			if _, err := a.do(*lim); err != nil {
				return r, err
			}
		}
		if r.Before, err = a.do(order{Op: "measure"}); err != nil {
			return r, err
		}
		if oc := r.Before.Ours; oc != nil && oc.Entries > 1+max(1, o.Warm) { // its own and the first spokes'
			return r, fmt.Errorf("our hub starts with %d entries, not only its own and the first spoke's: state left by an earlier run", oc.Entries)
		}
		if profile {
			if _, err := a.do(order{Op: "profile-start", Dir: o.Profile}); err != nil {
				return r, err
			}
		}
		r.Stats, err = g.register(regOpts{N: n, Window: o.Window, Retry: time.Second, Deadline: 180 * time.Second, IDBase: runID << 20})
		if err != nil {
			return r, err
		}
		if profile {
			p, err := a.do(order{Op: "profile-stop", Dir: o.Profile})
			if err != nil {
				return r, err
			}
			rep, err := exec.Command("perf", "report", "-i", p.Profile, "--kallsyms", p.Profile+".kallsyms", "--stdio",
				"--no-children", "--sort", "dso,sym", "-g", "none", "--percent-limit", "0.7").CombinedOutput()
			if err != nil {
				return r, fmt.Errorf("perf report: %w: %s", err, rep)
			}
			path := filepath.Join(o.Profile, "perf-"+impl+".txt")
			os.WriteFile(path, rep, 0o644)
			fmt.Printf("\nperf profile of the %s hub during %d registrations (%s; call graphs: perf report -i %s --kallsyms %s.kallsyms):\n%s\n",
				impl, n, path, p.Profile, p.Profile, trimReport(string(rep), 45))
		}
		// Neighbours are installed off the reply path: wait until their
		// count stops moving.
		prev := -1
		for i := 0; i < 50; i++ {
			if r.After, err = a.do(order{Op: "measure"}); err != nil {
				return r, err
			}
			if r.After.Neigh == prev || r.After.Neigh >= r.Stats.Answered+max(1, min(o.Warm, warmMax)) {
				break
			}
			prev = r.After.Neigh
			time.Sleep(200 * time.Millisecond)
		}
		return r, nil
	}
	impls := []string{"frr", "ours"}
	if o.Baseline != "" {
		impls = append(impls, "base")
	}
	var runs []frrRun
	for _, n := range o.Sizes {
		for round := 1; round <= o.Rounds; round++ {
			seq := slices.Clone(impls)
			if round%2 == 0 {
				slices.Reverse(seq)
			}
			for _, impl := range seq {
				r, err := one(impl, n, nil, false)
				if err != nil {
					return err
				}
				printRun(round, r)
				runs = append(runs, r)
			}
			if o.Ceiling {
				r, err := one("null", n, nil, false)
				if err != nil {
					return err
				}
				printRun(round, r)
				runs = append(runs, r)
			}
		}
	}
	var limRuns []frrRun
	if o.Limits {
		n := 2000
		for _, lim := range []order{{Op: "limit", Thresh3: 1024}, {Op: "limit", Thresh3: 1024, Prefill: 1022}} {
			for _, impl := range impls[:2] {
				r, err := one(impl, n, &lim, false)
				if err != nil {
					return err
				}
				r.Before.Err = fmt.Sprintf("gc_thresh3 %d, %d other entries", lim.Thresh3, lim.Prefill)
				printRun(0, r)
				limRuns = append(limRuns, r)
			}
		}
	}
	if o.Profile != "" {
		n := o.Sizes[len(o.Sizes)-1]
		for _, impl := range impls[:2] {
			if _, err := one(impl, n, nil, true); err != nil {
				return err
			}
		}
	}
	printFRRSummary(o, runs, limRuns)
	return nil
}

// warmSpoke is the spoke that proves a hub answers before a run; with
// -warm N > 1 the N spokes from warmFirst do (all within 198.18.0.0/15,
// apart from the measured spokes: at most 130,000).
const (
	warmSpoke = 131000
	warmFirst = 130800
	warmMax   = 256
)

// warmOpts is the registration run before the clock starts: spoke
// warmSpoke alone, or -warm spokes, which take a hub's first-run costs
// (the emulator translating its code, first allocations) off the clock
// for every hub alike. Their request IDs are apart from the run's.
func warmOpts(n int, idBase uint32) regOpts {
	o := regOpts{N: 1, First: warmSpoke, Retry: 200 * time.Millisecond, Deadline: 60 * time.Second, IDBase: idBase | 0xff000}
	if n > 1 {
		o.N, o.First, o.Window = min(n, warmMax), warmFirst, 64
	}
	return o
}

func printRun(round int, r frrRun) {
	m, all := r.perSpoke()
	fmt.Printf("round %d: %-4s %6d spokes: %5d answered (%d refused) in %v, %.0f/s (first reply %v, 10/50/90%% answered at %v/%v/%v), p50 %v p99 %v, %d sends; %d kernel neighbours (table_fulls +%d); RSS +%.2f KiB/spoke (all processes %.2f); CPU %v/registration",
		round, r.Impl, r.N, r.Stats.Answered, r.Stats.Refused, r.Stats.Elapsed.Round(time.Millisecond), r.Stats.rate(),
		r.Stats.First.Round(time.Millisecond), r.Stats.Tenths[0].Round(time.Millisecond), r.Stats.Tenths[1].Round(time.Millisecond), r.Stats.Tenths[2].Round(time.Millisecond),
		r.Stats.P50.Round(10*time.Microsecond), r.Stats.P99.Round(10*time.Microsecond), r.Stats.Sends,
		r.After.Neigh, r.After.TableFulls-r.Before.TableFulls, m/1024, all/1024, r.cpuPerReg().Round(time.Microsecond))
	if r.Before.Err != "" {
		fmt.Printf(" [%s]", r.Before.Err)
	}
	if oc := r.After.Ours; oc != nil {
		fmt.Printf("; ours: %d entries, drops %v, data plane %v", oc.Entries, oc.Dropped, oc.DPDrops)
	}
	fmt.Println()
}

func printFRRSummary(o frrOpts, runs, limRuns []frrRun) {
	fmt.Printf("\nNHRP hub on the kernel data plane, FRR's nhrpd and ours in the same VM boot, the same simulator, medians of %d rounds (window %d):\n", o.Rounds, o.Window)
	fmt.Printf("  %-6s %-5s %9s %9s %9s %10s %12s %14s %10s\n", "spokes", "hub", "reg/s", "p50", "p99", "answered", "neighbours", "KiB/spoke", "CPU/reg")
	for _, n := range o.Sizes {
		by := map[string][]frrRun{}
		for _, r := range runs {
			if r.N == n {
				by[r.Impl] = append(by[r.Impl], r)
			}
		}
		for _, impl := range []string{"frr", "ours", "base", "null"} {
			rs := by[impl]
			if len(rs) == 0 {
				continue
			}
			med := func(f func(frrRun) float64) float64 { return median(rs, f) }
			fmt.Printf("  %-6d %-5s %9.0f %9.2fms %8.2fms %5.0f/%-5d %12.0f %7.2f (%5.2f) %8.0fµs\n", n, impl,
				med(func(r frrRun) float64 { return r.Stats.rate() }),
				med(func(r frrRun) float64 { return ms(r.Stats.P50) }),
				med(func(r frrRun) float64 { return ms(r.Stats.P99) }),
				med(func(r frrRun) float64 { return float64(r.Stats.Answered) }), n,
				med(func(r frrRun) float64 { return float64(r.After.Neigh) }),
				med(func(r frrRun) float64 { m, _ := r.perSpoke(); return m / 1024 }),
				med(func(r frrRun) float64 { _, a := r.perSpoke(); return a / 1024 }),
				med(func(r frrRun) float64 { return float64(r.cpuPerReg()) / 1e3 }))
		}
		// Ratios round by round (the two hubs of a round ran back to back).
		var rate, mem, ceil []float64
		fr, or, nr := by["frr"], by["ours"], by["null"]
		for i := range min(len(or), len(nr)) {
			ceil = append(ceil, or[i].Stats.rate()/nr[i].Stats.rate())
		}
		for i := range min(len(fr), len(or)) {
			rate = append(rate, or[i].Stats.rate()/fr[i].Stats.rate())
			fm, _ := fr[i].perSpoke()
			om, _ := or[i].perSpoke()
			if fm > 0 {
				mem = append(mem, om/fm)
			}
		}
		if len(rate) > 0 {
			fmt.Printf("  %-6d ours/FRR: registrations/s %.2f× (goal ≥ 5×), memory per spoke %.2f× (goal ≤ 1×); medians of per-round ratios\n",
				n, median(rate, func(v float64) float64 { return v }), median(mem, func(v float64) float64 { return v }))
		}
		if br := by["base"]; len(br) > 0 {
			var brate, orate []float64
			for i := range min(len(br), len(fr), len(or)) {
				brate = append(brate, br[i].Stats.rate()/fr[i].Stats.rate())
				orate = append(orate, or[i].Stats.rate()/br[i].Stats.rate())
			}
			fmt.Printf("  %-6d base/FRR: registrations/s %.2f×; ours/base %.2f×; medians of per-round ratios\n",
				n, median(brate, func(v float64) float64 { return v }), median(orate, func(v float64) float64 { return v }))
		}
		if len(ceil) > 0 {
			fmt.Printf("  %-6d ours/null hub (the rig's ceiling): registrations/s %.2f×; medians of per-round ratios\n",
				n, median(ceil, func(v float64) float64 { return v }))
		}
	}
	if len(limRuns) > 0 {
		fmt.Printf("\n  when the kernel refuses neighbours (2,000 spokes):\n")
		for _, r := range limRuns {
			fmt.Printf("  %-42s %-5s %5d/%d answered, %.0f/s, %d neighbours installed, table_fulls +%d\n", r.Before.Err, r.Impl,
				r.Stats.Answered, r.N, r.Stats.rate(), r.After.Neigh, r.After.TableFulls-r.Before.TableFulls)
		}
	}
}

// trimReport keeps the header comments out and the first lines of a
// perf report.
func trimReport(s string, lines int) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "#") || strings.TrimSpace(l) == "" {
			continue
		}
		out = append(out, l)
		if len(out) == lines {
			break
		}
	}
	return strings.Join(out, "\n")
}
