// Command benchdataplane measures, in one run, TCP throughput (iperf3, one
// and two streams), ping latency and CPU between two LAN hosts over four
// paths: the plain routed path without a tunnel, the kernel's VXLAN (the
// reference kernel tunnel), the userspace GRE backend and the ebpf GRE
// backend, on a testbed of network namespaces, and prints medians and the
// ratios to plain. Rounds alternate between the paths so machine noise
// hits all alike. Root only; run it with `make bench-dataplane`.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/integration/dphelper"
	"github.com/opendmvpn/dmvpn/lab/testbed"
)

func main() {
	dphelper.MaybeRun()
	rounds := flag.Int("rounds", 3, "measurement rounds per path")
	secs := flag.Int("t", 5, "seconds per iperf3 run")
	pings := flag.Int("pings", 200, "pings per latency measurement")
	wire := flag.Bool("wire", false, "make the internet veths behave like NICs on a 1500-byte wire (no TSO/GSO, GRO on): the underlay then delivers coalesced GRE super-packets")
	profile := flag.String("profile", "", "directory for Go CPU profiles of both data planes and a perf report of one tunnel round")
	flag.Parse()
	if err := run(*rounds, *secs, *pings, *wire, *profile); err != nil {
		fmt.Fprintln(os.Stderr, "bench-dataplane:", err)
		os.Exit(1)
	}
}

type sample struct {
	gbps, gbps2 float64   // one stream, two streams
	rtts        []float64 // ms
	retrs       int
	cpu, dpCPU  float64 // % of one core during the one-stream run: the machine, the data-plane processes
}

func run(rounds, secs, pings int, wire bool, profile string) error {
	for _, tool := range []string{"iperf3", "ping"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is not installed (scripts/install-deps.sh installs it)", tool)
		}
	}
	// An interrupt cancels the run; the deferred Close still removes the
	// namespaces and processes.
	sctx, cancelSig := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancelSig()
	ctx, stop := context.WithTimeout(sctx, time.Duration(rounds*4*(2*secs+12)+60)*time.Second)
	defer stop()
	spec := testbed.Spec{Sites: []testbed.Site{
		{Name: "spa", Kind: testbed.Spoke, NBMA: netip.MustParsePrefix("198.51.100.1/24"), LAN: netip.MustParsePrefix("10.1.0.1/24"), Hosts: 1},
		{Name: "spb", Kind: testbed.Spoke, NBMA: netip.MustParsePrefix("203.0.113.1/24"), LAN: netip.MustParsePrefix("10.2.0.1/24"), Hosts: 1},
	}}
	tb, err := testbed.New(ctx, spec)
	if err != nil {
		return err
	}
	defer tb.Close()
	inet, spa, spb := tb.Node("inet"), tb.Node("spa"), tb.Node("spb")
	ha, hb := tb.Node("spa-h1"), tb.Node("spb-h1")
	if wire {
		for _, d := range []struct {
			n   *testbed.Node
			dev string
		}{{spa, "wan0"}, {spb, "wan0"}, {inet, "to-spa"}, {inet, "to-spb"}} {
			if _, err := d.n.Run(ctx, "ethtool", "-K", d.dev, "tso", "off", "gso", "off", "gro", "on"); err != nil {
				return err
			}
			if _, err := d.n.Run(ctx, "sh", "-c", "echo 50000 > /sys/class/net/"+d.dev+"/gro_flush_timeout"); err != nil {
				return err
			}
		}
	}
	if err := inet.IP("route add 10.1.0.0/24 via 198.51.100.1", "route add 10.2.0.0/24 via 203.0.113.1"); err != nil {
		return err
	}
	// The kernel's VXLAN between the two spokes: the reference kernel
	// tunnel (this kernel has no ip_gre).
	if err := spa.IP("link add vx0 type vxlan id 42 local 198.51.100.1 remote 203.0.113.1 dstport 4789 dev wan0",
		"addr add 10.9.0.1/24 dev vx0", "link set vx0 up"); err != nil {
		return err
	}
	if err := spb.IP("link add vx0 type vxlan id 42 local 203.0.113.1 remote 198.51.100.1 dstport 4789 dev wan0",
		"addr add 10.9.0.2/24 dev vx0", "link set vx0 up"); err != nil {
		return err
	}
	if profile != "" {
		if err := os.MkdirAll(profile, 0o755); err != nil {
			return err
		}
	}
	server, err := hb.Start(testbed.ProcSpec{Name: "iperf3-server", Args: []string{"iperf3", "-s", "--forceflush"}})
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, _, err := server.WaitFor(wctx, regexp.MustCompile("Server listening"), 0); err != nil {
		return err
	}
	routes := map[string][2]string{ // routes on spa and spb for each path
		"plain":     {"route replace 10.2.0.0/24 via 198.51.100.254", "route replace 10.1.0.0/24 via 203.0.113.254"},
		"vxlan":     {"route replace 10.2.0.0/24 via 10.9.0.2 dev vx0", "route replace 10.1.0.0/24 via 10.9.0.1 dev vx0"},
		"userspace": {"route replace 10.2.0.0/24 via 10.0.0.2 dev dmvpn0 onlink", "route replace 10.1.0.0/24 via 10.0.0.1 dev dmvpn0 onlink"},
	}
	routes["ebpf"] = routes["userspace"]
	// One data plane at a time owns dmvpn0: each tunnel measurement
	// starts its pair of helpers and stops them after.
	startTunnel := func(backend string, prof bool) (*dphelper.Instance, *dphelper.Instance, error) {
		cfg := func(addr, peerTun, peerNBMA, name string) dphelper.Config {
			c := dphelper.Config{Backend: backend, Name: "dmvpn0", Key: 1001, Prefix: addr,
				Neighbors: map[string]string{peerTun: peerNBMA}}
			if prof {
				c.CPUProfile = filepath.Join(profile, backend+"-"+name+".pprof")
			}
			return c
		}
		a, err := dphelper.Start(ctx, spa, cfg("10.0.0.1/24", "10.0.0.2", "203.0.113.1", "spa"))
		if err != nil {
			return nil, nil, err
		}
		b, err := dphelper.Start(ctx, spb, cfg("10.0.0.2/24", "10.0.0.1", "198.51.100.1", "spb"))
		if err != nil {
			a.Stop(ctx)
			return nil, nil, err
		}
		return a, b, nil
	}
	paths := []string{"plain", "vxlan", "userspace", "ebpf"}
	fmt.Printf("bench-dataplane: %d rounds × iperf3 -t %d (1 and 2 streams) + %d pings per path; underlay %s\n",
		rounds, secs, pings, map[bool]string{false: "veth defaults (TSO/GSO on, GRO off)", true: "wire mode (TSO/GSO off, GRO on)"}[wire])
	results := map[string][]sample{}
	counters := map[string][2]gre.Counters{}
	for r := 1; r <= rounds; r++ {
		for _, path := range paths {
			var a, b *dphelper.Instance
			if path == "userspace" || path == "ebpf" {
				prof := profile != "" && r == rounds
				if a, b, err = startTunnel(path, prof); err != nil {
					return fmt.Errorf("%s: %w", path, err)
				}
				if r == 1 {
					fmt.Printf("  %s: %s\n", path, a.Reason)
				}
			}
			if err := spa.IP(routes[path][0]); err != nil {
				return err
			}
			if err := spb.IP(routes[path][1]); err != nil {
				return err
			}
			ha.Run(ctx, "iperf3", "-c", hb.Addr.String(), "-t", "1") // warm-up, PMTU, neighbours
			perf := profile != "" && path == "ebpf" && r == rounds
			var pids []int
			if a != nil {
				pids = []int{a.Proc.Pid(), b.Proc.Pid()}
			}
			s, err := measure(ctx, ha, hb.Addr, secs, pings, perf, profile, pids)
			if a != nil {
				ca, _ := a.Counters(ctx)
				cb, _ := b.Counters(ctx)
				counters[path] = [2]gre.Counters{ca, cb}
				errs := errors.Join(a.Stop(ctx), b.Stop(ctx))
				if err == nil {
					err = errs
				}
			}
			if err != nil {
				return fmt.Errorf("%s round %d: %w", path, r, err)
			}
			results[path] = append(results[path], s)
			fmt.Printf("  round %d %-9s %6.2f Gbit/s (2 streams %6.2f)  retransmits %5d  ping median %.3f ms  CPU %3.0f%% (data plane %3.0f%%)\n",
				r, path, s.gbps, s.gbps2, s.retrs, median(s.rtts), s.cpu, s.dpCPU)
		}
	}
	report(paths, results)
	for _, path := range []string{"userspace", "ebpf"} {
		c := counters[path]
		fmt.Printf("%s counters (last round): spa tx %d pkts (BPF fast path %d), drops %v; spb rx %d pkts (BPF fast path %d, %d GRO super-packets), drops %v\n",
			path, c[0].TxPackets, c[0].FastTxPackets, c[0].Drops, c[1].RxPackets, c[1].FastRxPackets, c[1].RxSuper, c[1].Drops)
	}
	if profile != "" {
		fmt.Printf("profiles: %s (go tool pprof -top %s)\n", profile, filepath.Join(profile, "userspace-spa.pprof"))
	}
	return nil
}

func measure(ctx context.Context, from *testbed.Node, to netip.Addr, secs, pings int, perf bool, profile string, pids []int) (sample, error) {
	var s sample
	out, err := from.Run(ctx, "ping", "-c", strconv.Itoa(pings), "-i", "0.005", "-W", "1", to.String())
	if err != nil {
		return s, err
	}
	for _, m := range regexp.MustCompile(`time=([0-9.]+) ms`).FindAllStringSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(m[1], 64)
		s.rtts = append(s.rtts, v)
	}
	if len(s.rtts) < pings*9/10 {
		return s, fmt.Errorf("only %d of %d ping replies", len(s.rtts), pings)
	}
	var perfCmd *exec.Cmd
	if perf {
		if _, err := exec.LookPath("perf"); err == nil {
			perfCmd = exec.Command("perf", "record", "-a", "-g", "-o", filepath.Join(profile, "perf.data"), "--", "sleep", strconv.Itoa(max(secs-1, 1)))
			perfCmd.Stdout, perfCmd.Stderr = nil, nil
			if err := perfCmd.Start(); err != nil {
				perfCmd = nil
			}
		}
	}
	busy0, total0 := cpuTimes()
	proc0 := procTicks(pids)
	t0 := time.Now()
	out, err = from.Run(ctx, "iperf3", "-c", to.String(), "-t", strconv.Itoa(secs), "-J")
	busy1, total1 := cpuTimes()
	proc1 := procTicks(pids)
	wall := time.Since(t0).Seconds()
	if total1 > total0 {
		s.cpu = 100 * float64(runtime.NumCPU()) * float64(busy1-busy0) / float64(total1-total0)
	}
	s.dpCPU = 100 * float64(proc1-proc0) / clockTicks / wall
	if perfCmd != nil {
		perfCmd.Wait()
		data := filepath.Join(profile, "perf.data")
		byComm, _ := exec.Command("sh", "-c", "perf report -i "+data+" --no-children --sort comm --stdio -g none 2>/dev/null | grep '%' | head -15").Output()
		bySym, _ := exec.Command("sh", "-c", "perf report -i "+data+" --no-children --sort comm,sym --stdio -g none 2>/dev/null | grep '%' | head -40").Output()
		os.WriteFile(filepath.Join(profile, "perf-top.txt"), append(append(byComm, '\n'), bySym...), 0o644)
	}
	if err != nil {
		return s, err
	}
	if s.gbps, s.retrs, err = iperfResult(out); err != nil {
		return s, err
	}
	out, err = from.Run(ctx, "iperf3", "-c", to.String(), "-t", strconv.Itoa(secs), "-P", "2", "-J")
	if err != nil {
		return s, err
	}
	s.gbps2, _, err = iperfResult(out)
	return s, err
}

// iperfResult reads the receiver's rate and the sender's retransmits.
func iperfResult(out string) (float64, int, error) {
	var res struct {
		End struct {
			SumSent     struct{ Retransmits int } `json:"sum_sent"`
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		return 0, 0, fmt.Errorf("iperf3 output: %w", err)
	}
	if res.Error != "" {
		return 0, 0, errors.New("iperf3: " + res.Error)
	}
	return res.End.SumReceived.BitsPerSecond / 1e9, res.End.SumSent.Retransmits, nil
}

// clockTicks is USER_HZ, the unit of /proc's CPU times.
const clockTicks = 100

// cpuTimes returns the machine's busy and total CPU time from /proc/stat.
func cpuTimes() (busy, total uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	for i, v := range f[1:] {
		n, _ := strconv.ParseUint(v, 10, 64)
		if i >= 8 { // guest times are inside user already
			break
		}
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, total
}

// procTicks adds up the user and system time of processes.
func procTicks(pids []int) uint64 {
	var t uint64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		_, rest, ok := strings.Cut(string(b), ") ")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) > 12 {
			u, _ := strconv.ParseUint(f[11], 10, 64)
			s, _ := strconv.ParseUint(f[12], 10, 64)
			t += u + s
		}
	}
	return t
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	c := slices.Clone(v)
	slices.Sort(c)
	if len(c)%2 == 1 {
		return c[len(c)/2]
	}
	return (c[len(c)/2-1] + c[len(c)/2]) / 2
}

func report(paths []string, results map[string][]sample) {
	type stat struct{ gbps, gbps2, rtt, cpu, dpCPU float64 }
	stats := map[string]stat{}
	for _, path := range paths {
		var g, g2, r, c, dc []float64
		for _, s := range results[path] {
			g, g2, c, dc = append(g, s.gbps), append(g2, s.gbps2), append(c, s.cpu), append(dc, s.dpCPU)
			r = append(r, s.rtts...)
		}
		stats[path] = stat{median(g), median(g2), median(r), median(c), median(dc)}
	}
	plain := stats["plain"]
	var b strings.Builder
	fmt.Fprintf(&b, "\nmedians of %d rounds\n%-10s %9s %9s %9s %10s %8s %11s %9s\n", len(results["plain"]),
		"path", "1 stream", "2 streams", "of plain", "RTT (ms)", "added", "CPU busy", "data plane")
	for _, path := range paths {
		st := stats[path]
		ratio := 0.0
		if plain.gbps > 0 {
			ratio = st.gbps / plain.gbps
		}
		dp := "-"
		if path == "userspace" || path == "ebpf" {
			dp = fmt.Sprintf("%.0f%%", st.dpCPU)
		}
		fmt.Fprintf(&b, "%-10s %9.2f %9.2f %8.0f%% %10.3f %5.0f µs %10.0f%% %9s\n", path, st.gbps, st.gbps2, 100*ratio,
			st.rtt, (st.rtt-plain.rtt)*1000, st.cpu, dp)
	}
	fmt.Fprintf(&b, "(Gbit/s: iperf3 receiver; CPU busy: the whole machine during the one-stream run, %d%% = every core; data plane: the two tunnel processes — BPF runs in softirq and counts as machine time)\n", 100*runtime.NumCPU())
	e := stats["ebpf"]
	ratio := 0.0
	if plain.gbps > 0 {
		ratio = e.gbps / plain.gbps
	}
	added := (e.rtt - plain.rtt) * 1000
	fmt.Fprintf(&b, "\nthroughput ratio ebpf/plain: %.1f%% (goal ≥ 80%%: %s)\n", 100*ratio, verdict(ratio >= 0.8))
	fmt.Fprintf(&b, "added median latency, ebpf: %.0f µs (goal ≤ 50 µs: %s)\n", added, verdict(added <= 50))
	if plain.gbps > 0 {
		fmt.Fprintf(&b, "throughput ratio userspace/plain: %.1f%%, vxlan/plain: %.1f%%\n", 100*stats["userspace"].gbps/plain.gbps, 100*stats["vxlan"].gbps/plain.gbps)
	}
	fmt.Print(b.String())
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}
