// Command benchdataplane measures, in one run, TCP throughput (iperf3, one
// stream) and ping latency between two LAN hosts through the userspace GRE
// tunnel and through the plain routed path without a tunnel, on a testbed
// of network namespaces, and prints medians and their ratio. Rounds
// alternate between the two paths so machine noise hits both alike. Root
// only; run it with `make bench-dataplane`.
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
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/opendmvpn/dmvpn/integration/dphelper"
	"github.com/opendmvpn/dmvpn/integration/testbed"
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
	gbps  float64
	rtts  []float64 // ms
	retrs int
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
	ctx, stop := context.WithTimeout(sctx, time.Duration(rounds*2*(secs+6)+60)*time.Second)
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
	cfg := func(addr, peerTun, peerNBMA, peerLAN, prof string) dphelper.Config {
		c := dphelper.Config{Name: "dmvpn0", Key: 1001, Prefix: addr,
			Neighbors: map[string]string{peerTun: peerNBMA}}
		if profile != "" {
			c.CPUProfile = filepath.Join(profile, prof)
		}
		return c
	}
	if profile != "" {
		if err := os.MkdirAll(profile, 0o755); err != nil {
			return err
		}
	}
	a, err := dphelper.Start(ctx, spa, cfg("10.0.0.1/24", "10.0.0.2", "203.0.113.1", "10.2.0.0/24", "spa.pprof"))
	if err != nil {
		return err
	}
	b, err := dphelper.Start(ctx, spb, cfg("10.0.0.2/24", "10.0.0.1", "198.51.100.1", "10.1.0.0/24", "spb.pprof"))
	if err != nil {
		return err
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
	paths := map[string][2]string{ // routes on spa and spb for each path
		"plain":  {"route replace 10.2.0.0/24 via 198.51.100.254", "route replace 10.1.0.0/24 via 203.0.113.254"},
		"tunnel": {"route replace 10.2.0.0/24 via 10.0.0.2 dev dmvpn0 onlink", "route replace 10.1.0.0/24 via 10.0.0.1 dev dmvpn0 onlink"},
	}
	use := func(path string) error {
		if err := spa.IP(paths[path][0]); err != nil {
			return err
		}
		return spb.IP(paths[path][1])
	}
	fmt.Printf("bench-dataplane: %d rounds × iperf3 -t %d (1 stream) + %d pings per path; underlay %s; %s\n",
		rounds, secs, pings, map[bool]string{false: "veth defaults (TSO/GSO on, GRO off)", true: "wire mode (TSO/GSO off, GRO on)"}[wire], a.Reason)
	results := map[string][]sample{}
	for r := 1; r <= rounds; r++ {
		for _, path := range []string{"plain", "tunnel"} {
			if err := use(path); err != nil {
				return err
			}
			ha.Run(ctx, "iperf3", "-c", hb.Addr.String(), "-t", "1") // warm-up, PMTU
			perf := profile != "" && path == "tunnel" && r == rounds
			s, err := measure(ctx, ha, hb.Addr, secs, pings, perf, profile)
			if err != nil {
				return fmt.Errorf("%s round %d: %w", path, r, err)
			}
			results[path] = append(results[path], s)
			fmt.Printf("  round %d %-6s %6.2f Gbit/s  retransmits %5d  ping median %.3f ms\n", r, path, s.gbps, s.retrs, median(s.rtts))
		}
	}
	ca, _ := a.Counters(ctx)
	cb, _ := b.Counters(ctx)
	if err := a.Stop(ctx); err != nil {
		return err
	}
	if err := b.Stop(ctx); err != nil {
		return err
	}
	report(results)
	fmt.Printf("\ndata plane counters: spa tx %d pkts, drops %v; spb rx %d pkts (%d GRO super-packets), drops %v\n",
		ca.TxPackets, ca.Drops, cb.RxPackets, cb.RxSuper, cb.Drops)
	if profile != "" {
		fmt.Printf("profiles: %s (go tool pprof -top %s)\n", profile, filepath.Join(profile, "spa.pprof"))
	}
	return nil
}

func measure(ctx context.Context, from *testbed.Node, to netip.Addr, secs, pings int, perf bool, profile string) (sample, error) {
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
	out, err = from.Run(ctx, "iperf3", "-c", to.String(), "-t", strconv.Itoa(secs), "-J")
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
		return s, fmt.Errorf("iperf3 output: %w", err)
	}
	if res.Error != "" {
		return s, errors.New("iperf3: " + res.Error)
	}
	s.gbps = res.End.SumReceived.BitsPerSecond / 1e9
	s.retrs = res.End.SumSent.Retransmits
	return s, nil
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

func report(results map[string][]sample) {
	stat := func(path string) (gbps, rtt float64) {
		var g, r []float64
		for _, s := range results[path] {
			g = append(g, s.gbps)
			r = append(r, s.rtts...)
		}
		return median(g), median(r)
	}
	pg, pr := stat("plain")
	tg, tr := stat("tunnel")
	var b strings.Builder
	fmt.Fprintf(&b, "\n%-8s %14s %16s\n", "path", "median Gbit/s", "median RTT (ms)")
	fmt.Fprintf(&b, "%-8s %14.2f %16.3f\n", "plain", pg, pr)
	fmt.Fprintf(&b, "%-8s %14.2f %16.3f\n", "tunnel", tg, tr)
	ratio := 0.0
	if pg > 0 {
		ratio = tg / pg
	}
	added := (tr - pr) * 1000
	fmt.Fprintf(&b, "\nthroughput ratio tunnel/plain: %.1f%% (goal ≥ 60%%: %s)\n", 100*ratio, verdict(ratio >= 0.6))
	fmt.Fprintf(&b, "added median latency: %.0f µs (goal ≤ 100 µs: %s)\n", added, verdict(added <= 100))
	fmt.Print(b.String())
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}
