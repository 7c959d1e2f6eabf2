// Command benchnhrp measures the NHRP hub under load: a load generator in
// one network namespace simulates N spokes from N distinct NBMA addresses
// against one hub process (dmvpnd's daemon, userspace data plane) in
// another. It reports registrations per second, the time until all N are
// registered, the hub's memory per registered spoke and the resolution
// round trip through the hub. Root only; `make bench-nhrp` runs it.
//
// With -frr it compares FRR's nhrpd and dmvpnd as the hub on the kernel
// data plane, side by side in one VM boot, against the same simulator
// (`make bench-nhrp-frr`; frr_linux.go).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/opendmvpn/dmvpn/ipsec"
	"github.com/opendmvpn/dmvpn/lab/testbed"
)

// profile is where the hub writes a CPU profile, if set.
var profile string

// Child roles: the binary re-executes itself in the namespaces.
const envRole = "BENCHNHRP_ROLE"

var (
	hubNBMA  = netip.MustParseAddr("192.0.2.1")
	hubProto = netip.MustParseAddr("10.0.0.1")
	greKey   = uint32(42)
)

func main() {
	switch os.Getenv(envRole) {
	case "hub":
		os.Exit(runHub())
	case "load":
		os.Exit(runLoad())
	case "frrguest":
		os.Exit(runGuest())
	case "frrload":
		os.Exit(runFRRLoad())
	case "nullhub":
		os.Exit(runNullHub())
	case "scaleload":
		os.Exit(runScaleLoad())
	}
	n := flag.Int("n", 10000, "simulated spokes")
	rounds := flag.Int("rounds", 3, "rounds (a fresh hub each round); medians are reported")
	samples := flag.Int("rtt", 1000, "resolution round trips measured per round")
	flag.StringVar(&profile, "profile", "", "write a CPU profile of the hub to this file")
	withIPsec := flag.Bool("ipsec", false, "IPsec: real IKE peers (a simulator charon per 100 spokes, a certificate per spoke) against a hub with its own charon; measures initiate → registration, all spokes at once, the hub's charon memory and recovery after the hub's charon is killed (-n 50 is the reference)")
	withFRR := flag.Bool("frr", false, "side by side with FRR: FRR's nhrpd and dmvpnd as the hub on the kernel data plane (ip_gre in a VM), one after the other in the same VM boot, against the same simulator on the host")
	sizes := flag.String("sizes", "2000,10000", "-frr: the numbers of spokes")
	window := flag.Int("window", 256, "-frr: registrations outstanding at once")
	limits := flag.Bool("limits", true, "-frr: also the runs where the kernel refuses neighbours (gc_thresh3 1024, and a table already full)")
	profDir := flag.String("profile-dir", "", "-frr: perf profiles of each hub into this directory")
	dmvpnd := flag.String("dmvpnd", "", "-frr, -scale: dmvpnd binary (default: beside this one)")
	baseline := flag.String("baseline", "", "-frr: another dmvpnd binary (an earlier build), measured beside ours in each round as hub \"base\"")
	cpus := flag.Int("cpus", 2, "-frr: the VM's CPUs")
	clocksource := flag.String("clocksource", "", "-frr: the guest kernel's clock source (tsc: clocksource=tsc tsc=reliable; default: the kernel's choice, hpet under TCG, whose reads are system calls)")
	warm := flag.Int("warm", 1, "-frr: spokes that register with each hub before the clock starts (at most 256; 1 proves it answers, more take its first-run costs off the clock for every hub alike)")
	kscale := flag.Int("kscale", 0, "-frr: instead of the side-by-side runs, the kernel data plane at scale: this many spokes (100000 is the reference) register with dmvpnd alone on ip_gre in the VM; checks every one is in the kernel's neighbour table and the table's limits were raised by dmvpnd from limits.max_entries")
	ceiling := flag.Bool("ceiling", true, "-frr: each round also measures the null hub, a responder that only turns each request into its reply (the ceiling of the simulator, the VM's NIC and the guest's GRE path)")
	scale := flag.Bool("scale", false, "scale mode: -n spokes (100000 is the reference) register with dmvpnd (the command, userspace data plane), refresh in the steady state and in fast cycles with dmvpnctl show dmvpn, show ip nhrp json and metrics scrapes running; fails when a goal is missed")
	scaleWindow := flag.Int("window-scale", 4096, "-scale: first registrations outstanding at once")
	holding := flag.Int("holding", 7200, "-scale: holding time the spokes ask for (s); the steady state refreshes each spoke every third of it")
	steady := flag.Duration("steady", 20*time.Second, "-scale: how long the steady state is measured")
	cycle := flag.Duration("cycle", 10*time.Second, "-scale: one fast refresh cycle (every spoke once)")
	ipsecDPD := flag.Duration("ipsec-dpd", ipsec.DefaultHubDPDDelay, "-ipsec: the simulated spokes' dpd_delay (the hub keeps its default, ipsec.DefaultHubDPDDelay); the idle CPU is measured over this long, at least 10 s")
	flag.Parse()
	if *scale {
		exe, _ := os.Executable()
		o := scaleOpts{N: *n, Rounds: *rounds, Window: *scaleWindow, Holding: *holding, Steady: *steady, Cycle: *cycle,
			Dmvpnd: filepath.Join(filepath.Dir(exe), "dmvpnd"), Dmvpnctl: filepath.Join(filepath.Dir(exe), "dmvpnctl")}
		if *dmvpnd != "" {
			o.Dmvpnd = *dmvpnd
		}
		if err := runScale(o); err != nil {
			fmt.Fprintln(os.Stderr, "bench-nhrp:", err)
			os.Exit(1)
		}
		return
	}
	if *withFRR {
		o := frrOpts{Rounds: *rounds, Window: *window, Limits: *limits, Profile: *profDir, Dmvpnd: *dmvpnd, Baseline: *baseline, CPUs: *cpus, Ceiling: *ceiling, Clocksource: *clocksource, KScale: *kscale, Warm: *warm}
		for _, f := range strings.Split(*sizes, ",") {
			v, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || v < 1 || v > 120000 {
				fmt.Fprintf(os.Stderr, "bench-nhrp: -sizes: %q is not a number of spokes (1-120000)\n", f)
				os.Exit(2)
			}
			o.Sizes = append(o.Sizes, v)
		}
		if o.Dmvpnd == "" {
			exe, _ := os.Executable()
			o.Dmvpnd = filepath.Join(filepath.Dir(exe), "dmvpnd")
		}
		if o.KScale < 0 || o.KScale > 130000 {
			fmt.Fprintf(os.Stderr, "bench-nhrp: -kscale: %d spokes is out of range (0-130000: the simulator's NBMA range 198.18.0.0/15)\n", o.KScale)
			os.Exit(2)
		}
		if err := runFRRBench(o); err != nil {
			fmt.Fprintln(os.Stderr, "bench-nhrp:", err)
			os.Exit(1)
		}
		return
	}
	if *withIPsec {
		if err := runIPsec(*n, *rounds, *ipsecDPD); err != nil {
			fmt.Fprintln(os.Stderr, "bench-nhrp:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(*n, *rounds, *samples); err != nil {
		fmt.Fprintln(os.Stderr, "bench-nhrp:", err)
		os.Exit(1)
	}
}

// result is what one round measured.
type result struct {
	N            int             `json:"n"`
	Elapsed      time.Duration   `json:"elapsed"`
	Sends        int             `json:"sends"`
	RTTs         []time.Duration `json:"rtts"`
	HubRSSBefore int64           `json:"rss_before"`
	HubRSSAfter  int64           `json:"rss_after"`
	HeapBefore   uint64          `json:"heap_before"`
	HeapAfter    uint64          `json:"heap_after"`
	Entries      int             `json:"entries"`
}

func run(n, rounds, samples int) error {
	if err := testbed.Available(); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var results []result
	for r := 1; r <= rounds; r++ {
		res, err := round(ctx, n, samples)
		if err != nil {
			return fmt.Errorf("round %d: %w", r, err)
		}
		fmt.Printf("round %d: %d spokes registered in %v (%d requests sent), %.0f registrations/s, hub memory +%.2f KiB/spoke (RSS), +%.2f KiB/spoke (Go heap), resolution RTT median %v p99 %v\n",
			r, res.N, res.Elapsed.Round(time.Millisecond), res.Sends, float64(res.N)/res.Elapsed.Seconds(),
			float64(res.HubRSSAfter-res.HubRSSBefore)/1024/float64(res.N),
			(float64(res.HeapAfter)-float64(res.HeapBefore))/1024/float64(res.N),
			pct(res.RTTs, 50), pct(res.RTTs, 99))
		results = append(results, res)
	}
	med := func(f func(result) float64) float64 { return median(results, f) }
	el := med(func(r result) float64 { return r.Elapsed.Seconds() })
	fmt.Printf("\nNHRP hub, %d simulated spokes, medians of %d rounds:\n", n, rounds)
	fmt.Printf("  time until all registered   %.3f s   (goal ≤ 2 s)\n", el)
	fmt.Printf("  registrations per second    %.0f\n", float64(n)/el)
	fmt.Printf("  hub memory per spoke        %.2f KiB RSS, %.2f KiB Go heap   (goal ≤ 5 KB)\n",
		med(func(r result) float64 { return float64(r.HubRSSAfter-r.HubRSSBefore) / 1024 / float64(r.N) }),
		med(func(r result) float64 { return (float64(r.HeapAfter) - float64(r.HeapBefore)) / 1024 / float64(r.N) }))
	fmt.Printf("  resolution RTT via the hub  median %.3f ms, p90 %.3f ms, p99 %.3f ms   (goal median ≤ 1 ms)\n",
		med(func(r result) float64 { return ms(pct(r.RTTs, 50)) }),
		med(func(r result) float64 { return ms(pct(r.RTTs, 90)) }),
		med(func(r result) float64 { return ms(pct(r.RTTs, 99)) }))
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)]
}

// round builds the testbed, starts a hub, runs the load generator and
// tears everything down.
func round(ctx context.Context, n, samples int) (result, error) {
	spec := testbed.Spec{Sites: []testbed.Site{
		{Name: "hub", Kind: testbed.Hub, NBMA: netip.PrefixFrom(hubNBMA, 24)},
		{Name: "load", Kind: testbed.Spoke, NBMA: netip.MustParsePrefix("198.51.100.1/24")},
	}}
	tb, err := testbed.New(ctx, spec)
	if err != nil {
		return result{}, err
	}
	defer tb.Close()
	// The load namespace owns 198.18.0.0/15 (the benchmarking range): one
	// address per simulated spoke, without configuring 10,000 addresses.
	if err := tb.Node("load").IP("route add local 198.18.0.0/15 dev lo"); err != nil {
		return result{}, err
	}
	if err := tb.Node("inet").IP("route add 198.18.0.0/15 via 198.51.100.1"); err != nil {
		return result{}, err
	}
	exe, err := os.Executable()
	if err != nil {
		return result{}, err
	}
	env := []string{envRole + "=hub"}
	if profile != "" {
		env = append(env, "BENCHNHRP_PROFILE="+profile)
	}
	hub, err := tb.Node("hub").Start(testbed.ProcSpec{Name: "hub", Args: []string{exe}, Env: env, Stdin: true})
	if err != nil {
		return result{}, err
	}
	defer hub.Stop()
	if _, _, err := hub.WaitFor(ctx, regexp.MustCompile(`^READY`), 0); err != nil {
		return result{}, fmt.Errorf("hub: %w\n%s", err, hub.Output())
	}
	var res result
	res.N = n
	before, err := hubMemory(ctx, hub)
	if err != nil {
		return result{}, err
	}
	res.HubRSSBefore, res.HeapBefore = before.RSS, before.Heap

	load, err := tb.Node("load").Start(testbed.ProcSpec{Name: "load", Args: []string{exe},
		Env: []string{envRole + "=load", "BENCHNHRP_N=" + strconv.Itoa(n), "BENCHNHRP_RTT=" + strconv.Itoa(samples)}})
	if err != nil {
		return result{}, err
	}
	defer load.Stop()
	if err := load.Wait(ctx); err != nil {
		hub.CloseStdin()
		hub.Wait(ctx) // the profile of a failed run too
		return result{}, fmt.Errorf("load generator: %w\n%s", err, load.Output())
	}
	line := lastLine(load.Output(), "RESULT ")
	if line == "" {
		return result{}, fmt.Errorf("load generator printed no result:\n%s", load.Output())
	}
	var lr result
	if err := json.Unmarshal([]byte(line), &lr); err != nil {
		return result{}, err
	}
	res.Elapsed, res.Sends, res.RTTs = lr.Elapsed, lr.Sends, lr.RTTs
	after, err := hubMemory(ctx, hub)
	if err != nil {
		return result{}, err
	}
	res.HubRSSAfter, res.HeapAfter, res.Entries = after.RSS, after.Heap, after.Entries
	fmt.Printf("hub: %d NHRP packets from the data plane, %d registration requests handled, %d replies sent, data-plane drops %v\n",
		after.NHRPRx, after.RegRecv, after.RegSent, after.Drops)
	hub.CloseStdin()
	hub.Wait(ctx) // the hub writes its profile on the way out
	if res.Entries < n {
		return result{}, fmt.Errorf("hub holds %d registrations, want %d", res.Entries, n)
	}
	return res, nil
}

// memory is the hub's answer to a MEM request on its standard input.
type memory struct {
	RSS       int64             `json:"rss"`
	CharonRSS int64             `json:"charon_rss,omitempty"`
	CharonCPU time.Duration     `json:"charon_cpu,omitempty"` // charon's user+system CPU so far
	CPU       time.Duration     `json:"cpu,omitempty"`        // the hub's
	Heap      uint64            `json:"heap"`
	Entries   int               `json:"entries"`
	RegRecv   uint64            `json:"reg_recv"`
	RegSent   uint64            `json:"reg_sent"`
	NHRPRx    uint64            `json:"nhrp_rx"`
	Drops     map[string]uint64 `json:"drops"`
}

func hubMemory(ctx context.Context, hub *testbed.Proc) (memory, error) {
	from := strings.Count(hub.Output(), "\n")
	if err := hub.Send("MEM"); err != nil {
		return memory{}, err
	}
	line, _, err := hub.WaitFor(ctx, regexp.MustCompile(`^MEM `), from)
	if err != nil {
		return memory{}, err
	}
	var m memory
	err = json.Unmarshal([]byte(strings.TrimPrefix(line, "MEM ")), &m)
	return m, err
}

func lastLine(out, prefix string) string {
	lines := strings.Split(out, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], prefix) {
			return strings.TrimPrefix(lines[i], prefix)
		}
	}
	return ""
}

// runLoad is the load generator child.
func runLoad() int {
	n, _ := strconv.Atoi(os.Getenv("BENCHNHRP_N"))
	if dir := os.Getenv("BENCHNHRP_IPSEC"); dir != "" {
		from, _ := strconv.Atoi(os.Getenv("BENCHNHRP_FROM"))
		dpd, err := time.ParseDuration(os.Getenv("BENCHNHRP_DPD"))
		if err != nil {
			fmt.Println("FATAL BENCHNHRP_DPD:", err)
			return 1
		}
		return runIPsecLoad(dir, from, n, dpd)
	}
	samples, _ := strconv.Atoi(os.Getenv("BENCHNHRP_RTT"))
	g, err := newLoadgen(hubNBMA, hubProto, greKey)
	if err != nil {
		fmt.Println("FATAL", err)
		return 1
	}
	defer g.close()
	elapsed, sends, err := g.registerAll(n, 60*time.Second)
	if err != nil {
		fmt.Println("FATAL", err)
		return 1
	}
	rtts, err := g.resolutionRTTs(n, samples)
	if err != nil {
		fmt.Println("FATAL", err)
		return 1
	}
	b, _ := json.Marshal(result{Elapsed: elapsed, Sends: sends, RTTs: rtts})
	fmt.Println("RESULT " + string(b))
	return 0
}

// median returns the median of f over the rounds.
func median[R any](rounds []R, f func(R) float64) float64 {
	v := make([]float64, len(rounds))
	for i, r := range rounds {
		v[i] = f(r)
	}
	slices.Sort(v)
	return v[len(v)/2]
}
