package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/opendmvpn/dmvpn/lab/testbed"
)

// ipsecRound is what one IPsec round measured.
type ipsecRound struct {
	ipsecResult
	Rereg                  time.Duration
	ResetsAfter            int   // SA resets by the end of the recovery
	CharonBefore, CharonAt int64 // the hub's charon RSS before the spokes and with all of them
	HubBefore, HubAt       int64 // dmvpnd's (the hub's) RSS likewise
	// HeapBefore and HeapAt are dmvpnd's Go heap in use (after a
	// collection): what it keeps, where RSS also holds what the runtime
	// has not returned to the kernel yet.
	HeapBefore, HeapAt uint64
	// IdleCharon and IdleHub are the CPU (fraction of a core) of the hub's
	// charon and dmvpnd over the idle window with every SA up and nothing
	// sent but what the SAs' dead peer detection sends.
	IdleCharon, IdleHub float64
	// SetupCharon and SetupHub are the CPU the hub's charon and dmvpnd
	// spent from before the first spoke until all were registered.
	SetupCharon, SetupHub time.Duration
	Load                  float64 // the machine's load average (1 min) when all were registered
}

// runIPsec runs the IPsec rounds and prints medians. Each simulator
// charon's SAs share one kernel-libipsec toward one destination; after the hub's
// charon restarts some of them come back established yet carry nothing
// until reset (as dmvpnd resets a server silent over its SA), which
// lengthens the recovery here: the recovery goal is asserted with real
// spokes (BenchmarkIPsecHubRecovery).
func runIPsec(n, rounds int, dpd time.Duration) error {
	if err := testbed.Available(); err != nil {
		return err
	}
	if _, err := os.Stat("/usr/lib/ipsec/charon"); err != nil {
		return fmt.Errorf("strongSwan's charon is missing (scripts/install-deps.sh installs it): %w", err)
	}
	if n < 2 || n > 250*ipsecPerCharon {
		return fmt.Errorf("-n %d: the IPsec benchmark takes 2 to %d spokes", n, 250*ipsecPerCharon)
	}
	idle := max(10*time.Second, dpd)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var rs []ipsecRound
	for r := 1; r <= rounds; r++ {
		res, err := ipsecRoundRun(ctx, n, dpd, idle)
		if err != nil {
			return fmt.Errorf("round %d: %w", r, err)
		}
		fmt.Printf("round %d: one spoke initiate → registered %v; %d more at once: all registered %v; hub charon %.1f MiB → %.1f MiB, dmvpnd %.1f MiB → %.1f MiB (heap %.1f → %.1f MiB); setup CPU: charon %.2f s, dmvpnd %.2f s; idle: charon %.2f%%, dmvpnd %.2f%% of a core; hub charon killed: all registered again %s; silent SAs reset %d, %d; load average %.1f\n",
			r, res.Single.Round(time.Millisecond), n-1, res.All.Round(time.Millisecond),
			float64(res.CharonBefore)/(1<<20), float64(res.CharonAt)/(1<<20), float64(res.HubBefore)/(1<<20), float64(res.HubAt)/(1<<20),
			float64(res.HeapBefore)/(1<<20), float64(res.HeapAt)/(1<<20), res.SetupCharon.Seconds(), res.SetupHub.Seconds(), 100*res.IdleCharon, 100*res.IdleHub, rereg(res.Rereg), res.Resets, res.ResetsAfter-res.Resets, res.Load)
		rs = append(rs, res)
	}
	med := func(f func(ipsecRound) float64) float64 { return median(rs, f) }
	// A round whose spokes were not all registered again within 120 s
	// counts as 120 s, and says so.
	back := med(func(r ipsecRound) float64 {
		if r.Rereg < 0 {
			return 120
		}
		return r.Rereg.Seconds()
	})
	fmt.Printf("\nNHRP over IPsec (userspace ESP; the hub's charon, %d simulator charons), %d spokes, medians of %d rounds, load average %.1f:\n",
		ipsecCharons(n), n, rounds, med(func(r ipsecRound) float64 { return r.Load }))
	fmt.Printf("  one spoke, initiate → registered        %.0f ms\n", med(func(r ipsecRound) float64 { return ms(r.Single) }))
	fmt.Printf("  %d spokes at once, until all registered  %.3f s\n", n-1, med(func(r ipsecRound) float64 { return r.All.Seconds() }))
	fmt.Printf("  hub charon memory                        %.1f MiB idle, %.1f MiB with %d SAs (%.1f KiB per SA)\n",
		med(func(r ipsecRound) float64 { return float64(r.CharonBefore) / (1 << 20) }),
		med(func(r ipsecRound) float64 { return float64(r.CharonAt) / (1 << 20) }), n,
		med(func(r ipsecRound) float64 { return float64(r.CharonAt-r.CharonBefore) / 1024 / float64(n) }))
	fmt.Printf("  dmvpnd (hub) memory                      %.1f MiB idle, %.1f MiB with %d SAs (%.1f KiB per SA and registration)\n",
		med(func(r ipsecRound) float64 { return float64(r.HubBefore) / (1 << 20) }),
		med(func(r ipsecRound) float64 { return float64(r.HubAt) / (1 << 20) }), n,
		med(func(r ipsecRound) float64 { return float64(r.HubAt-r.HubBefore) / 1024 / float64(n) }))
	fmt.Printf("  dmvpnd Go heap in use                    %.1f MiB idle, %.1f MiB with %d SAs (%.1f KiB per SA and registration)\n",
		med(func(r ipsecRound) float64 { return float64(r.HeapBefore) / (1 << 20) }),
		med(func(r ipsecRound) float64 { return float64(r.HeapAt) / (1 << 20) }), n,
		med(func(r ipsecRound) float64 { return (float64(r.HeapAt) - float64(r.HeapBefore)) / 1024 / float64(n) }))
	fmt.Printf("  %d idle SAs (dpd_delay %v both sides, over %v)  hub charon %.2f%% of a core (%.1f µs per SA-second), dmvpnd %.2f%%\n", n,
		dpd, idle, med(func(r ipsecRound) float64 { return 100 * r.IdleCharon }),
		med(func(r ipsecRound) float64 { return 1e6 * r.IdleCharon / float64(n) }),
		med(func(r ipsecRound) float64 { return 100 * r.IdleHub }))
	fmt.Printf("  CPU to set up and register %d SAs      hub charon %.2f s (%.2f ms per SA), dmvpnd %.2f s (%.2f ms per SA)\n", n,
		med(func(r ipsecRound) float64 { return r.SetupCharon.Seconds() }),
		med(func(r ipsecRound) float64 { return 1e3 * r.SetupCharon.Seconds() / float64(n) }),
		med(func(r ipsecRound) float64 { return r.SetupHub.Seconds() }),
		med(func(r ipsecRound) float64 { return 1e3 * r.SetupHub.Seconds() / float64(n) }))
	fmt.Printf("  hub charon SIGKILL → all registered      %.3f s%s   (%d SAs of the simulator silent after the restart and reset, median)\n",
		back, map[bool]string{true: " (or more: not all within 120 s)"}[back >= 120], int(med(func(r ipsecRound) float64 { return float64(r.ResetsAfter - r.Resets) })))
	fmt.Printf("  (the 5 s recovery goal is asserted with real spokes: go test -run '^$' -bench IPsecHubRecovery ./integration/)\n")
	return nil
}

func ipsecRoundRun(ctx context.Context, n int, dpd, idleWindow time.Duration) (ipsecRound, error) {
	var res ipsecRound
	dir, err := os.MkdirTemp("", "benchnhrp-ipsec-")
	if err != nil {
		return res, err
	}
	if os.Getenv("BENCHNHRP_KEEP") == "" {
		defer os.RemoveAll(dir)
	} else {
		fmt.Println("keeping", dir)
	}
	if err := makePKI(dir, n); err != nil {
		return res, err
	}
	// One load namespace per simulator charon, each on its own /30 of
	// 198.51.100.0/24, holding its spokes' addresses (198.18.<k>.0/24,
	// routed to it by the internet router).
	k := ipsecCharons(n)
	spec := testbed.Spec{Sites: []testbed.Site{{Name: "hub", Kind: testbed.Hub, NBMA: netip.PrefixFrom(hubNBMA, 24)}}}
	for c := range k {
		spec.Sites = append(spec.Sites, testbed.Site{Name: fmt.Sprintf("load%d", c), Kind: testbed.Spoke,
			NBMA: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(4*c + 1)}), 30)})
	}
	tb, err := testbed.New(ctx, spec)
	if err != nil {
		return res, err
	}
	defer tb.Close()
	var routes []string
	for c := range k {
		var addrs []string
		for i := c * ipsecPerCharon; i < min(n, (c+1)*ipsecPerCharon); i++ {
			addrs = append(addrs, "addr add "+ipsecSpokeNBMA(i).String()+"/32 dev wan0")
		}
		if err := tb.Node(fmt.Sprintf("load%d", c)).IP(addrs...); err != nil {
			return res, err
		}
		routes = append(routes, fmt.Sprintf("route add 198.18.%d.0/24 via 198.51.100.%d", c, 4*c+1))
	}
	if err := tb.Node("inet").IP(routes...); err != nil {
		return res, err
	}
	exe, err := os.Executable()
	if err != nil {
		return res, err
	}
	if os.Getenv("BENCHNHRP_KEEP") != "" {
		td, err := tb.Node("inet").Start(testbed.ProcSpec{Name: "tcpdump", Args: []string{"tcpdump", "-i", "any", "-n", "-U", "-w", filepath.Join(dir, "inet.pcap"), "udp port 4500"}})
		if err == nil {
			defer td.Stop()
		}
	}
	hub, err := tb.Node("hub").Start(testbed.ProcSpec{Name: "hub", Args: []string{exe}, Env: []string{envRole + "=hub", "BENCHNHRP_IPSEC=" + dir}, Stdin: true})
	if err != nil {
		return res, err
	}
	defer hub.Stop()
	if _, _, err := hub.WaitFor(ctx, regexp.MustCompile(`^READY`), 0); err != nil {
		return res, fmt.Errorf("hub: %w\n%s", err, hub.Output())
	}
	before, err := hubMemory(ctx, hub)
	if err != nil {
		return res, err
	}
	res.CharonBefore, res.HubBefore, res.HeapBefore = before.CharonRSS, before.RSS, before.Heap
	res.SetupCharon, res.SetupHub = -before.CharonCPU, -before.CPU
	loads := make([]*testbed.Proc, k)
	for c := range k {
		p, err := tb.Node(fmt.Sprintf("load%d", c)).Start(testbed.ProcSpec{Name: fmt.Sprintf("load%d", c), Args: []string{exe}, Stdin: true,
			Env: []string{envRole + "=load", "BENCHNHRP_FROM=" + strconv.Itoa(c*ipsecPerCharon), "BENCHNHRP_N=" + strconv.Itoa(min(n, (c+1)*ipsecPerCharon)),
				"BENCHNHRP_DPD=" + dpd.String(), "BENCHNHRP_IPSEC=" + dir}})
		if err != nil {
			return res, err
		}
		defer p.Stop()
		loads[c] = p
	}
	if os.Getenv("BENCHNHRP_KEEP") != "" {
		defer func() {
			hub.Send("DUMP")
			time.Sleep(500 * time.Millisecond)
			os.WriteFile(filepath.Join(dir, "hub.out"), []byte(hub.Output()), 0o600)
			for c, p := range loads {
				os.WriteFile(filepath.Join(dir, fmt.Sprintf("load%d.out", c)), []byte(p.Output()), 0o600)
			}
		}()
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	// await waits for re on every child (from line from[c], if given) and
	// returns the lines.
	await := func(re string, from []int) ([]string, error) {
		lines := make([]string, k)
		for c, p := range loads {
			f := 0
			if from != nil {
				f = from[c]
			}
			line, _, err := p.WaitFor(wctx, regexp.MustCompile(`^(`+re+`|FATAL)`), f)
			if err != nil || strings.HasPrefix(line, "FATAL") {
				return nil, fmt.Errorf("load generator %d: %v %s\n%s\nhub:\n%s", c, err, line, p.Output(), warnings(hub.Output()))
			}
			lines[c] = line
		}
		return lines, nil
	}
	if _, err := await("LOADED", nil); err != nil {
		return res, err
	}
	if err := loads[0].Send("SINGLE"); err != nil {
		return res, err
	}
	line, _, err := loads[0].WaitFor(wctx, regexp.MustCompile(`^(SINGLE|FATAL)`), 0)
	if err != nil || strings.HasPrefix(line, "FATAL") {
		return res, fmt.Errorf("load generator 0: %v %s\n%s", err, line, loads[0].Output())
	}
	d, _ := strconv.ParseInt(strings.TrimPrefix(line, "SINGLE "), 10, 64)
	res.Single = time.Duration(d)
	for _, p := range loads {
		if err := p.Send("GO"); err != nil {
			return res, err
		}
	}
	lines, err := await("REGISTERED", nil)
	if err != nil {
		return res, err
	}
	var start, last int64
	for _, l := range lines {
		var p ipsecPart
		if err := json.Unmarshal([]byte(strings.TrimPrefix(l, "REGISTERED ")), &p); err != nil {
			return res, err
		}
		if start == 0 || p.Start < start {
			start = p.Start
		}
		last = max(last, p.Last)
		res.Resets += p.Resets
	}
	res.All = time.Duration(last - start)
	res.Load = loadAverage()
	at, err := hubMemory(ctx, hub)
	if err != nil {
		return res, err
	}
	res.CharonAt, res.HubAt, res.HeapAt = at.CharonRSS, at.RSS, at.Heap
	res.SetupCharon += at.CharonCPU
	res.SetupHub += at.CPU
	if path := os.Getenv("BENCHNHRP_HEAP"); path != "" {
		// dmvpnd's heap with every SA up and registered.
		from := strings.Count(hub.Output(), "\n")
		if err := hub.Send("HEAP " + path); err != nil {
			return res, err
		}
		if _, _, err := hub.WaitFor(wctx, regexp.MustCompile(`^HEAPED`), from); err != nil {
			return res, err
		}
	}
	if at.Entries < n {
		return res, fmt.Errorf("hub holds %d registrations, want %d", at.Entries, n)
	}
	// The SAs idle: what their dead peer detection costs the hub.
	time.Sleep(idleWindow)
	idle, err := hubMemory(ctx, hub)
	if err != nil {
		return res, err
	}
	res.IdleCharon = (idle.CharonCPU - at.CharonCPU).Seconds() / idleWindow.Seconds()
	res.IdleHub = (idle.CPU - at.CPU).Seconds() / idleWindow.Seconds()
	from := strings.Count(hub.Output(), "\n")
	if err := hub.Send("KILLCHARON"); err != nil {
		return res, err
	}
	line, _, err = hub.WaitFor(wctx, regexp.MustCompile(`^KILLED `), from)
	if err != nil || line == "KILLED 0" {
		return res, fmt.Errorf("killing the hub's charon: %v %s", err, line)
	}
	killed, _ := strconv.ParseInt(strings.TrimPrefix(line, "KILLED "), 10, 64)
	for _, p := range loads {
		if err := p.Send(line); err != nil {
			return res, err
		}
	}
	if lines, err = await("REREGISTERED", nil); err != nil {
		return res, err
	}
	last = 0
	for _, l := range lines {
		f := strings.Fields(l)
		d, _ := strconv.ParseInt(f[1], 10, 64)
		if d < 0 {
			last = -1 // some spokes were not registered again in time
		}
		if last >= 0 {
			last = max(last, d)
		}
		if len(f) > 2 {
			r, _ := strconv.Atoi(f[2])
			res.ResetsAfter += r
		}
	}
	res.Rereg = time.Duration(last - killed)
	if last < 0 {
		res.Rereg = -1
	}
	hub.CloseStdin()
	hub.Wait(ctx)
	return res, nil
}

// rereg says how long the spokes took to register again, or that they
// did not all within the time given.
func rereg(d time.Duration) string {
	if d < 0 {
		return "not within 120 s"
	}
	return d.Round(time.Millisecond).String()
}

// loadAverage is the machine's load average over the last minute.
func loadAverage() float64 {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// warnings keeps the hub's log lines above info.
func warnings(out string) string {
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, `"level":"warn"`) || strings.Contains(l, `"level":"error"`) || strings.HasPrefix(l, "FATAL") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}
