package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/lab/testbed"
)

// The scale mode (-scale, `make bench-nhrp-scale`): N spokes (100,000 by
// default) register with one dmvpnd hub — the real command with its YAML
// file, control socket and metrics endpoint, userspace data plane, in a
// namespace — from the simulator in another namespace; then they refresh
// at the rate of the default registration interval (the steady state)
// and in fast cycles, one without and one with `dmvpnctl show dmvpn`,
// `show ip nhrp json` and metrics scrapes running back to back. Each
// round on a fresh testbed and hub; medians beside the goals; the command
// fails when one is missed.

// scaleOpts configures the scale mode.
type scaleOpts struct {
	N, Rounds int
	// Window is how many first registrations are outstanding at once.
	Window int
	// Holding is the holding time the spokes ask for (s); the steady
	// state is a refresh of each spoke every Holding/3.
	Holding int
	// Steady is how long the steady state is measured.
	Steady time.Duration
	// Cycle is one fast refresh cycle (every spoke once).
	Cycle time.Duration
	// Dmvpnd and Dmvpnctl are the binaries.
	Dmvpnd, Dmvpnctl string
}

// scaleResult is what the load child measured in one round.
type scaleResult struct {
	N             int             `json:"n"`
	Registered    time.Duration   `json:"registered"` // first send → last reply
	RegP99        time.Duration   `json:"reg_p99"`
	Sends         int             `json:"sends"`
	RSSBefore     int64           `json:"rss_before"`
	RSSAfter      int64           `json:"rss_after"`
	RSSPeak       int64           `json:"rss_peak"`
	SteadyRate    float64         `json:"steady_rate"` // refreshes/s
	SteadyCPU     float64         `json:"steady_cpu"`  // fraction of one core
	CycleCPU      float64         `json:"cycle_cpu"`
	CycleRate     float64         `json:"cycle_rate"`
	P99Quiet      time.Duration   `json:"p99_quiet"`
	P99Scrape     time.Duration   `json:"p99_scrape"`
	P50Quiet      time.Duration   `json:"p50_quiet"`
	P50Scrape     time.Duration   `json:"p50_scrape"`
	Scrapes       []time.Duration `json:"scrapes"`
	ScrapeBytes   int             `json:"scrape_bytes"`
	ShowDmvpn     []time.Duration `json:"show_dmvpn"`
	ShowDmvpnRows int             `json:"show_dmvpn_rows"`
	ShowNHRPJSON  []time.Duration `json:"show_nhrp_json"`
	CtlRSS        int64           `json:"ctl_rss"` // dmvpnctl's peak RSS of show dmvpn
	Entries       int             `json:"entries"`
}

func runScale(o scaleOpts) error {
	if err := testbed.Available(); err != nil {
		return err
	}
	for _, b := range []string{o.Dmvpnd, o.Dmvpnctl} {
		if _, err := os.Stat(b); err != nil {
			return fmt.Errorf("%w (make bench-nhrp-scale builds it)", err)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var rs []scaleResult
	for r := 1; r <= o.Rounds; r++ {
		res, err := scaleRound(ctx, o)
		if err != nil {
			return fmt.Errorf("round %d: %w", r, err)
		}
		fmt.Printf("round %d: %d registered in %v (p99 %v, %d sends); RSS %+.0f B/spoke (%.0f MiB → %.0f MiB, peak %.0f MiB); steady %.0f refreshes/s: %.2f%% of a core; cycle %.0f/s: %.1f%%; p99 %v quiet, %v under scrapes; scrape %v (%d B), show dmvpn %v (%d rows, dmvpnctl %.0f MiB), show ip nhrp json %v\n",
			r, res.N, res.Registered.Round(time.Millisecond), res.RegP99.Round(time.Microsecond), res.Sends,
			float64(res.RSSAfter-res.RSSBefore)/float64(res.N), mib(res.RSSBefore), mib(res.RSSAfter), mib(res.RSSPeak),
			res.SteadyRate, 100*res.SteadyCPU, res.CycleRate, 100*res.CycleCPU,
			res.P99Quiet.Round(time.Microsecond), res.P99Scrape.Round(time.Microsecond),
			pct(res.Scrapes, 50).Round(time.Millisecond), res.ScrapeBytes,
			pct(res.ShowDmvpn, 50).Round(time.Millisecond), res.ShowDmvpnRows, mib(res.CtlRSS),
			pct(res.ShowNHRPJSON, 50).Round(time.Millisecond))
		rs = append(rs, res)
	}
	med := func(f func(scaleResult) float64) float64 { return median(rs, f) }
	reg := med(func(r scaleResult) float64 { return r.Registered.Seconds() })
	perSpoke := med(func(r scaleResult) float64 { return float64(r.RSSAfter-r.RSSBefore) / float64(r.N) })
	steady := med(func(r scaleResult) float64 { return 100 * r.SteadyCPU })
	scrape := med(func(r scaleResult) float64 { return ms(pct(r.Scrapes, 50)) })
	quiet := med(func(r scaleResult) float64 { return ms(r.P99Quiet) })
	busy := med(func(r scaleResult) float64 { return ms(r.P99Scrape) })
	ratio := med(func(r scaleResult) float64 { return float64(r.P99Scrape) / float64(max(r.P99Quiet, 1)) })
	var missed []string
	check := func(ok bool, what string) string {
		if ok {
			return "ok"
		}
		missed = append(missed, what)
		return "MISSED"
	}
	fmt.Printf("\nNHRP hub at scale, %d spokes (userspace data plane, namespaces), medians of %d rounds:\n", o.N, o.Rounds)
	fmt.Printf("  time until all registered        %.2f s (%.0f/s)   goal ≤ 10 s   %s\n", reg, float64(o.N)/reg, check(reg <= 10, "registration time"))
	fmt.Printf("  hub RSS per spoke                %.0f B   goal ≤ 3 KB   %s\n", perSpoke, check(perSpoke <= 3000, "RSS per spoke"))
	fmt.Printf("  refresh steady state             %.2f%% of one core (%.0f refreshes/s: every spoke each %d s)   goal ≤ 5%%   %s\n",
		steady, med(func(r scaleResult) float64 { return r.SteadyRate }), o.Holding/3, check(steady <= 5, "steady-state CPU"))
	fmt.Printf("  fast refresh cycles              %.1f%% of one core at %.0f refreshes/s (no goal)\n",
		med(func(r scaleResult) float64 { return 100 * r.CycleCPU }), med(func(r scaleResult) float64 { return r.CycleRate }))
	fmt.Printf("  metrics scrape                   %.1f ms (median of each round's scrapes)   goal ≤ 100 ms   %s\n", scrape, check(scrape <= 100, "scrape time"))
	fmt.Printf("  registration p99 during scrapes  %.2f ms vs %.2f ms without (%.2f×)   goal within 2×   %s\n", busy, quiet, ratio, check(ratio <= 2, "p99 during scrapes"))
	fmt.Printf("  dmvpnctl show dmvpn              %.0f ms, %.0f MiB RSS in dmvpnctl (no goal)\n",
		med(func(r scaleResult) float64 { return ms(pct(r.ShowDmvpn, 50)) }), med(func(r scaleResult) float64 { return mib(r.CtlRSS) }))
	fmt.Printf("  dmvpnctl show ip nhrp json       %.0f ms (no goal)\n", med(func(r scaleResult) float64 { return ms(pct(r.ShowNHRPJSON, 50)) }))
	if len(missed) > 0 {
		return fmt.Errorf("goals missed: %v", missed)
	}
	return nil
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// scaleRound builds the testbed, starts dmvpnd as the hub, runs the load
// child and tears everything down.
func scaleRound(ctx context.Context, o scaleOpts) (scaleResult, error) {
	spec := testbed.Spec{Sites: []testbed.Site{
		{Name: "hub", Kind: testbed.Hub, NBMA: netip.PrefixFrom(hubNBMA, 24)},
		{Name: "load", Kind: testbed.Spoke, NBMA: netip.MustParsePrefix("198.51.100.1/24")},
	}}
	tb, err := testbed.New(ctx, spec)
	if err != nil {
		return scaleResult{}, err
	}
	defer tb.Close()
	if err := tb.Node("load").IP("route add local 198.18.0.0/15 dev lo"); err != nil {
		return scaleResult{}, err
	}
	if err := tb.Node("inet").IP("route add 198.18.0.0/15 via 198.51.100.1"); err != nil {
		return scaleResult{}, err
	}
	dir, err := os.MkdirTemp("", "benchnhrp-scale-")
	if err != nil {
		return scaleResult{}, err
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "dmvpnd.sock")
	cfg := fmt.Sprintf(`node: hub
role: hub
tunnel:
  interface: dmvpn0
  address: %s/8
  source: %s
  key: %d
  dataplane: userspace
  holding_time: %d
  max_send: 100000
policy:
  allow: all
ipsec: off
firewall: off
logging:
  level: warn
metrics:
  listen: %s:9474
control:
  socket: %s
`, hubProto, hubNBMA, greKey, o.Holding, hubNBMA, sock)
	cfgPath := filepath.Join(dir, "hub.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return scaleResult{}, err
	}
	hub, err := tb.Node("hub").Start(testbed.ProcSpec{Name: "dmvpnd", Args: []string{o.Dmvpnd, "-c", cfgPath}})
	if err != nil {
		return scaleResult{}, err
	}
	defer hub.Stop()
	c := control.NewClient(sock)
	for deadline := time.Now().Add(60 * time.Second); ; {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		var st control.Status
		err := c.Get(cctx, control.PathStatus, &st)
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return scaleResult{}, fmt.Errorf("dmvpnd did not answer: %w\n%s", err, hub.Output())
		}
		time.Sleep(100 * time.Millisecond)
	}
	exe, err := os.Executable()
	if err != nil {
		return scaleResult{}, err
	}
	b, _ := json.Marshal(o)
	load, err := tb.Node("load").Start(testbed.ProcSpec{Name: "load", Args: []string{exe},
		Env: []string{envRole + "=scaleload", "BENCHNHRP_SCALE=" + string(b), "BENCHNHRP_HUBPID=" + strconv.Itoa(hub.Pid()),
			"BENCHNHRP_SOCKET=" + sock}})
	if err != nil {
		return scaleResult{}, err
	}
	defer load.Stop()
	if err := load.Wait(ctx); err != nil {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		var st control.Status
		var tr control.TrafficResponse
		e1, e2 := c.Get(cctx, control.PathStatus, &st), c.Get(cctx, control.PathTraffic, &tr)
		b1, _ := json.Marshal(st.NHRP)
		b2, _ := json.Marshal(tr)
		return scaleResult{}, fmt.Errorf("load generator: %w\n%s\nhub:\n%s\nstatus %v %s\ntraffic %v %s", err, load.Output(), hub.Output(), e1, b1, e2, b2)
	}
	line := lastLine(load.Output(), "RESULT ")
	if line == "" {
		return scaleResult{}, fmt.Errorf("load generator printed no result:\n%s", load.Output())
	}
	var res scaleResult
	if err := json.Unmarshal([]byte(line), &res); err != nil {
		return scaleResult{}, err
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var st control.Status
	if err := c.Get(cctx, control.PathStatus, &st); err != nil {
		return scaleResult{}, err
	}
	res.Entries = st.NHRP.Entries - 1 // less the hub's own
	if res.Entries < o.N {
		return res, fmt.Errorf("hub holds %d registrations, want %d", res.Entries, o.N)
	}
	return res, nil
}

// runScaleLoad is the load child of the scale mode: it registers, reads
// the hub's memory and CPU in /proc (one PID namespace), refreshes and
// runs the shell and the scrape against it.
func runScaleLoad() int {
	var o scaleOpts
	if err := json.Unmarshal([]byte(os.Getenv("BENCHNHRP_SCALE")), &o); err != nil {
		fmt.Println("FATAL", err)
		return 1
	}
	pid, _ := strconv.Atoi(os.Getenv("BENCHNHRP_HUBPID"))
	sock := os.Getenv("BENCHNHRP_SOCKET")
	res, err := scaleLoad(o, pid, sock)
	if err != nil {
		fmt.Println("FATAL", err)
		return 1
	}
	b, _ := json.Marshal(res)
	fmt.Println("RESULT " + string(b))
	return 0
}

func scaleLoad(o scaleOpts, pid int, sock string) (scaleResult, error) {
	res := scaleResult{N: o.N}
	g, err := newLoadgen(hubNBMA, hubProto, greKey)
	if err != nil {
		return res, err
	}
	defer g.close()
	peak := func() {
		res.RSSPeak = max(res.RSSPeak, testbed.RSS(pid))
	}
	res.RSSBefore = testbed.RSS(pid)
	id := uint32(1)
	run := func(ro regOpts) (regStats, error) {
		ro.N, ro.IDBase, ro.Holding = o.N, id, uint16(o.Holding)
		id += uint32(o.N) + 1
		if ro.Deadline == 0 {
			ro.Deadline = 120 * time.Second
		}
		st, err := g.register(ro)
		peak()
		if err == nil && st.Answered < o.N {
			err = fmt.Errorf("%d of %d answered (%d refused)", st.Answered, o.N, st.Refused)
		}
		if err == nil && st.Refused > 0 {
			err = fmt.Errorf("%d of %d refused", st.Refused, o.N)
		}
		return st, err
	}

	// All at once, as after a hub restart.
	st, err := run(regOpts{Window: o.Window})
	if err != nil {
		return res, fmt.Errorf("registration: %w", err)
	}
	res.Registered, res.RegP99, res.Sends = st.Elapsed, st.P99, st.Sends
	res.RSSAfter = testbed.RSS(pid)
	fmt.Printf("registered %d in %v\n", o.N, st.Elapsed)

	// The steady state: every spoke refreshes once per Holding/3, spread
	// evenly; measured for o.Steady (a part of one interval).
	interval := time.Duration(o.Holding/3) * time.Second
	part := min(o.N, max(1, int(int64(o.N)*int64(o.Steady)/int64(interval))))
	cpu0, t0 := cpuOf(pid), time.Now()
	st, err = g.register(regOpts{N: part, IDBase: id, Holding: uint16(o.Holding), Window: part, Pace: o.Steady, Deadline: o.Steady + 30*time.Second})
	id += uint32(part) + 1
	if err == nil && st.Answered < part {
		err = fmt.Errorf("%d of %d answered", st.Answered, part)
	}
	if err != nil {
		return res, fmt.Errorf("steady state: %w", err)
	}
	if wait := o.Steady - time.Since(t0); wait > 0 {
		time.Sleep(wait)
	}
	el := time.Since(t0)
	res.SteadyCPU = (cpuOf(pid) - cpu0).Seconds() / el.Seconds()
	res.SteadyRate = float64(part) / el.Seconds()
	peak()

	// Fast cycles: one quiet, one with the shell and scrapes.
	cpu0, t0 = cpuOf(pid), time.Now()
	st, err = run(regOpts{Window: o.N, Pace: o.Cycle})
	if err != nil {
		return res, fmt.Errorf("quiet cycle: %w", err)
	}
	el = time.Since(t0)
	res.CycleCPU = (cpuOf(pid) - cpu0).Seconds() / el.Seconds()
	res.CycleRate = float64(o.N) / el.Seconds()
	res.P99Quiet, res.P50Quiet = st.P99, st.P50

	// The same cycles again, repeated until a scrape, show dmvpn and
	// show ip nhrp json have each run at least once (at most 6 cycles),
	// the three running back to back in turn meanwhile.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var shellErr error
	all := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return shellErr != nil || (len(res.Scrapes) > 0 && len(res.ShowDmvpn) > 0 && len(res.ShowNHRPJSON) > 0)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		url := fmt.Sprintf("http://%s:9474/metrics", hubNBMA)
		for k := 0; ; k++ {
			select {
			case <-stop:
				return
			default:
			}
			var err error
			switch k % 3 {
			case 0:
				var d time.Duration
				var n int
				d, n, err = scrape(url)
				mu.Lock()
				res.Scrapes, res.ScrapeBytes = append(res.Scrapes, d), n
				mu.Unlock()
			case 1:
				var d time.Duration
				var rows int
				var rss int64
				d, rows, rss, err = ctlRun(o.Dmvpnctl, sock, "show", "dmvpn")
				mu.Lock()
				res.ShowDmvpn, res.ShowDmvpnRows, res.CtlRSS = append(res.ShowDmvpn, d), rows, max(res.CtlRSS, rss)
				mu.Unlock()
			case 2:
				var d time.Duration
				d, _, _, err = ctlRun(o.Dmvpnctl, sock, "show", "ip", "nhrp", "json")
				mu.Lock()
				res.ShowNHRPJSON = append(res.ShowNHRPJSON, d)
				mu.Unlock()
			}
			if err != nil {
				mu.Lock()
				shellErr = err
				mu.Unlock()
				return
			}
		}
	}()
	var lat []time.Duration
	for c := 0; c < 6 && (c == 0 || !all()); c++ {
		st, err = run(regOpts{Window: o.N, Pace: o.Cycle})
		if err != nil {
			break
		}
		lat = append(lat, st.Lat...)
	}
	close(stop)
	wg.Wait()
	if err != nil {
		return res, fmt.Errorf("cycle with scrapes: %w", err)
	}
	if shellErr != nil {
		return res, shellErr
	}
	if !all() {
		return res, fmt.Errorf("six cycles ended before a scrape, show dmvpn and show ip nhrp json each ran once (%d, %d, %d)",
			len(res.Scrapes), len(res.ShowDmvpn), len(res.ShowNHRPJSON))
	}
	st.P99, st.P50 = pct(lat, 99), pct(lat, 50)
	res.P99Scrape, res.P50Scrape = st.P99, st.P50
	if res.ShowDmvpnRows < o.N {
		return res, fmt.Errorf("show dmvpn printed %d peer rows, want %d", res.ShowDmvpnRows, o.N)
	}
	return res, nil
}

// scrape reads the metrics endpoint once.
func scrape(url string) (time.Duration, int, error) {
	t0 := time.Now()
	resp, err := http.Get(url)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	d := time.Since(t0)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("metrics: %s", resp.Status)
	}
	return d, int(n), err
}

// peerRow is a row of show dmvpn's table: the peer's NBMA address first.
var peerRow = regexp.MustCompile(`^\s*\d+\s+\d+\.\d+\.\d+\.\d+\s+\d+\.\d+\.\d+\.\d+\s`)

// ctlRun runs dmvpnctl and times it; it counts show dmvpn's peer rows
// and reports dmvpnctl's peak RSS.
func ctlRun(bin, sock string, args ...string) (time.Duration, int, int64, error) {
	cmd := exec.Command(bin, append([]string{"--socket", sock}, args...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, 0, 0, err
	}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, 0, 0, err
	}
	rows := 0
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<20), 1<<30)
	for sc.Scan() {
		if peerRow.Match(sc.Bytes()) {
			rows++
		}
	}
	err = cmd.Wait()
	d := time.Since(t0)
	var rss int64
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		rss = ru.Maxrss * 1024
	}
	if err != nil {
		return d, rows, rss, fmt.Errorf("dmvpnctl %v: %w", args, err)
	}
	return d, rows, rss, nil
}
