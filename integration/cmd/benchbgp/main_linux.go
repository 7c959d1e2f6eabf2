// Command benchbgp measures the hub's BGP side by side with FRR: a hub in
// one network namespace, N spokes simulated by a wire-level BGP generator
// (GoBGP's packet codec, one TCP session per spoke from its own address,
// four prefixes each) in another, joined by a veth that stands for the
// tunnel. Our hub is dmvpnd's BGP controller on GoBGP with its routes
// through host, fed the NHRP engine's registration events; the reference
// is FRR's bgpd and zebra with the spokes as dynamic neighbours. Each round
// measures both, in alternating order, on fresh namespaces: one spoke from
// registration to its session and to its routes in the hub's kernel, a
// withdrawal, a registration's expiry (ours), N spokes at once (sessions,
// routes, FIB rate, memory per neighbour); then the hub failover on the
// lab (ours). Medians are reported beside the goals; the command fails
// when one of ours misses its goal. Root only; `make bench-bgp` runs it.
// BENCHBGP_LOG=FILE keeps our hub's output (GoBGP's warnings) in FILE
// and the generator's in FILE.gen.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/opendmvpn/dmvpn/lab/testbed"
)

// Child roles: the binary re-executes itself in the namespaces.
const (
	envRole     = "BENCHBGP_ROLE"
	envHub      = "BENCHBGP_HUB"
	envPrefixes = "BENCHBGP_PREFIXES"
	envDev      = "BENCHBGP_DEV"
	envProfile  = "BENCHBGP_PROFILE"
)

// Goals (issue 15).
const (
	goalOne      = 2 * time.Second
	goalWithdraw = time.Second
	goalAll      = 30 * time.Second
	goalFIB      = 5000.0
	goalFailover = 5 * time.Second
)

func main() {
	switch os.Getenv(envRole) {
	case "gen":
		os.Exit(runGen())
	case "hub":
		os.Exit(runHub())
	}
	n := flag.Int("n", 1000, "simulated spokes")
	prefixes := flag.Int("prefixes", 4, "prefixes each spoke announces (1-4)")
	bulk := flag.Int("bulk", 5000, "prefixes one neighbour announces at once for the FIB rate (0: none)")
	rounds := flag.Int("rounds", 3, "rounds of each column (fresh namespaces each); medians are reported")
	failover := flag.Int("failover", 3, "rounds of the hub failover on the lab (0: none)")
	withFRR := flag.Bool("frr", true, "the FRR column (bgpd and zebra as the hub)")
	profile := flag.String("profile", "", "write a CPU profile of our hub (the last round's) to this file")
	exe, _ := os.Executable()
	bin := flag.String("bin", filepath.Dir(exe), "directory of dmvpnd, dmvpnctl and dmvpn-lab (the failover)")
	flag.Parse()
	if *n < 1 || *n > maxSpokes || *prefixes < 1 || *prefixes > 4 || *rounds < 1 || *bulk < 0 || *bulk > maxBulk {
		fmt.Fprintf(os.Stderr, "bench-bgp: -n 1-%d, -prefixes 1-4, -rounds ≥ 1, -bulk 0-%d\n", maxSpokes, maxBulk)
		os.Exit(2)
	}
	if *profile != "" {
		abs, _ := filepath.Abs(*profile)
		os.Setenv(envProfile, abs)
	}
	if err := run(opts{N: *n, Prefixes: *prefixes, Bulk: *bulk, Rounds: *rounds, Failover: *failover, FRR: *withFRR, Bin: *bin}); err != nil {
		fmt.Fprintln(os.Stderr, "bench-bgp:", err)
		os.Exit(1)
	}
}

type opts struct {
	N, Prefixes, Bulk, Rounds, Failover int
	FRR                                 bool
	Bin                                 string
}

// column is one implementation's figures in one round.
type column struct {
	OneEstablished, OneRoutes time.Duration
	Withdraw, Expiry          time.Duration
	AllEstablished, AllRoutes time.Duration
	FIBRate                   float64
	MemPerNeighbor            float64 // bytes of RSS
	HeapPerNeighbor           float64 // bytes of Go heap (ours)
	FIBAlone                  float64 // routes/s of one host Set (ours)
	// Flaps counts the sessions that went down during the N spokes.
	Flaps int
}

func run(o opts) error {
	if err := testbed.Available(); err != nil {
		return err
	}
	// bgpd keeps a socket per neighbour: it inherits this limit.
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		_ = unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if o.FRR {
		if why := frrAvailable(); why != "" {
			return fmt.Errorf("%s (or run with -frr=false)", why)
		}
	}
	var ours, frrs []column
	for r := 1; r <= o.Rounds; r++ {
		order := []bool{false, true} // ours first in odd rounds
		if r%2 == 0 {
			order = []bool{true, false}
		}
		for _, isFRR := range order {
			if isFRR && !o.FRR {
				continue
			}
			c, err := runColumn(ctx, o, isFRR)
			name := "dmvpnd"
			if isFRR {
				name = "FRR"
			}
			if err != nil {
				return fmt.Errorf("round %d, %s: %w", r, name, err)
			}
			fmt.Printf("round %d %-6s one spoke: established %v, routes %v; withdrawal %v; expiry %v; %d spokes: established %v, routes %v, %.0f routes/s, %.1f KiB/neighbour, %d sessions lost\n",
				r, name, ms(c.OneEstablished), ms(c.OneRoutes), ms(c.Withdraw), ms(c.Expiry), o.N, ms(c.AllEstablished), ms(c.AllRoutes), c.FIBRate, c.MemPerNeighbor/1024, c.Flaps)
			if isFRR {
				frrs = append(frrs, c)
			} else {
				ours = append(ours, c)
			}
		}
	}
	var fails []time.Duration
	for r := 1; r <= o.Failover; r++ {
		d, err := failoverRound(ctx, o.Bin, r)
		if err != nil {
			return fmt.Errorf("failover round %d: %w", r, err)
		}
		fmt.Printf("failover round %d: hub1 killed → spoke1's LAN reaches spoke2's through hub2 in %v\n", r, ms(d))
		fails = append(fails, d)
	}
	return report(o, ours, frrs, fails)
}

func ms(d time.Duration) time.Duration { return d.Round(time.Millisecond) }

// runColumn measures one implementation on fresh namespaces.
func runColumn(ctx context.Context, o opts, isFRR bool) (c column, err error) {
	tb, err := testbed.New(ctx, testbed.Spec{Sites: []testbed.Site{
		{Name: "hub", Kind: testbed.Hub, NBMA: netip.MustParsePrefix("192.0.2.1/24")},
		{Name: "gen", Kind: testbed.Spoke, NBMA: netip.MustParsePrefix("198.51.100.1/24")},
	}})
	if err != nil {
		return c, err
	}
	defer tb.Close()
	hubN, genN := tb.Node("hub"), tb.Node("gen")
	// The tunnel: a veth, the hub at 172.16.0.1/16, the spokes' addresses
	// local to the generator's namespace (172.16.128.0/17).
	if out, err := exec.Command("ip", "link", "add", "bb0", "netns", hubN.NS, "type", "veth", "peer", "name", "bb1", "netns", genN.NS).CombinedOutput(); err != nil {
		return c, fmt.Errorf("veth: %w: %s", err, out)
	}
	if err := hubN.IP("addr add "+hubTunnel.String()+" dev bb0", "link set bb0 up"); err != nil {
		return c, err
	}
	// The hub's neighbour entries of the spokes are permanent: the
	// kernel's table is shared by every namespace of the machine and
	// garbage-collects beyond 1,024 entries, permanent ones aside.
	out, err := genN.Run(ctx, "cat", "/sys/class/net/bb1/address")
	if err != nil {
		return c, fmt.Errorf("bb1's address: %w: %s", err, out)
	}
	mac := strings.TrimSpace(out)
	neigh := make([]string, 0, o.N)
	for i := range o.N {
		neigh = append(neigh, fmt.Sprintf("neigh replace %s lladdr %s dev bb0 nud permanent", spokeAddr(i), mac))
	}
	if err := hubN.IP(neigh...); err != nil {
		return c, err
	}
	if err := genN.IP("addr add 172.16.0.2/17 dev bb1", "link set bb1 up", "route add local 172.16.128.0/17 dev lo"); err != nil {
		return c, err
	}
	exe, err := os.Executable()
	if err != nil {
		return c, err
	}
	w, err := watchRoutes(hubN.NS)
	if err != nil {
		return c, err
	}
	defer w.close()

	var hub *testbed.Proc
	var frrHub *frrHub
	if isFRR {
		if frrHub, err = startFRR(ctx, hubN, o.N); err != nil {
			return c, err
		}
		defer frrHub.stop()
	} else {
		if hub, err = startRole(ctx, hubN, exe, "hub", envDev+"=bb0"); err != nil {
			return c, err
		}
		defer hub.Stop()
		defer func() { // a clean exit (the profile is written on the way out)
			_ = hub.CloseStdin()
			wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			_ = hub.Wait(wctx)
			if path := os.Getenv("BENCHBGP_LOG"); path != "" {
				_ = os.WriteFile(path, []byte(hub.Output()), 0o644)
			}
		}()
	}
	gen, err := startRole(ctx, genN, exe, "gen", envHub+"="+hubTunnel.Addr().String(), envPrefixes+"="+strconv.Itoa(o.Prefixes))
	if err != nil {
		return c, err
	}
	defer gen.Stop()
	defer func() {
		if path := os.Getenv("BENCHBGP_LOG"); path != "" {
			_ = os.WriteFile(path+".gen", []byte(gen.Output()), 0o644)
		}
	}()
	if frrHub != nil {
		defer func() {
			if err != nil {
				err = fmt.Errorf("%w\n%s", err, frrHub.diag())
			}
		}()
	}

	// One spoke: registration (FRR: the spoke's first dial) → session →
	// its routes in the kernel.
	p0 := spokePrefixes(0, o.Prefixes)
	from := lines(gen)
	t0 := time.Now()
	if hub != nil {
		if err := hub.Send("REG 0 1"); err != nil {
			return c, err
		}
	}
	if err := gen.Send("START 0 1"); err != nil {
		return c, err
	}
	est, err := waitStamp(ctx, gen, `^EST 0 (\d+)`, from, 30*time.Second)
	if err != nil {
		return c, fmt.Errorf("spoke 0's session: %w", err)
	}
	c.OneEstablished = est.Sub(t0)
	at, err := w.waitPrefixes("spoke 0's routes", p0, true, 30*time.Second)
	if err != nil {
		return c, err
	}
	c.OneRoutes = at.Sub(t0)

	// Withdrawal: an UPDATE withdrawing them → gone from the kernel.
	t0 = time.Now()
	if err := gen.Send("WITHDRAW 0"); err != nil {
		return c, err
	}
	if at, err = w.waitPrefixes("spoke 0's withdrawal", p0, false, 30*time.Second); err != nil {
		return c, err
	}
	c.Withdraw = at.Sub(t0)
	if err := gen.Send("ANNOUNCE 0"); err != nil {
		return c, err
	}
	if _, err = w.waitPrefixes("spoke 0's routes again", p0, true, 30*time.Second); err != nil {
		return c, err
	}
	// Ours: the registration expires → the neighbour and its routes go.
	if hub != nil {
		t0 = time.Now()
		if err := hub.Send("EXPIRE 0"); err != nil {
			return c, err
		}
		if at, err = w.waitPrefixes("spoke 0's expiry", p0, false, 30*time.Second); err != nil {
			return c, err
		}
		c.Expiry = at.Sub(t0)
	}
	if err := gen.Send("STOP 0 1"); err != nil {
		return c, err
	}
	if _, err := w.wait("no routes left", 30*time.Second, func(h map[netip.Prefix]bool) bool { return len(h) == 0 }); err != nil {
		return c, err
	}

	// The FIB: one neighbour announces bulk prefixes at once; the rate
	// is from the first of them in the kernel to the last.
	if o.Bulk > 0 {
		if hub != nil {
			if err := hub.Send(fmt.Sprintf("REG %d %d", bulkSpoke, bulkSpoke+1)); err != nil {
				return c, err
			}
		}
		w.mark()
		if err := gen.Send(fmt.Sprintf("BULK %d", o.Bulk)); err != nil {
			return c, err
		}
		if _, err := w.waitCount(fmt.Sprintf("%d routes of one neighbour", o.Bulk), o.Bulk, 2*time.Minute); err != nil {
			return c, err
		}
		if k, first, last := w.added(); k > 1 && last.After(first) {
			c.FIBRate = float64(k-1) / last.Sub(first).Seconds()
		}
		if hub != nil {
			if err := hub.Send(fmt.Sprintf("EXPIRE %d", bulkSpoke)); err != nil {
				return c, err
			}
		}
		if err := gen.Send(fmt.Sprintf("STOP %d %d", bulkSpoke, bulkSpoke+1)); err != nil {
			return c, err
		}
		if _, err := w.wait("the bulk routes gone", time.Minute, func(h map[netip.Prefix]bool) bool { return len(h) == 0 }); err != nil {
			return c, err
		}
	}

	// N spokes at once.
	memBefore, heapBefore, err := memory(ctx, hub, frrHub)
	if err != nil {
		return c, err
	}
	from = lines(gen)
	t0 = time.Now()
	if hub != nil {
		if err := hub.Send(fmt.Sprintf("REG 0 %d", o.N)); err != nil {
			return c, err
		}
	}
	if err := gen.Send(fmt.Sprintf("START 0 %d", o.N)); err != nil {
		return c, err
	}
	timeout := 2*goalAll + time.Duration(o.N)*20*time.Millisecond
	if est, err = waitStamp(ctx, gen, `^ESTALL (\d+)`, from, timeout); err != nil {
		return c, fmt.Errorf("%d sessions: %w", o.N, err)
	}
	c.AllEstablished = est.Sub(t0)
	if at, err = w.waitCount(fmt.Sprintf("%d routes", o.N*o.Prefixes), o.N*o.Prefixes, timeout); err != nil {
		if hub != nil {
			if line, serr := ask(ctx, hub, "STAT", `^STAT `); serr == nil {
				err = fmt.Errorf("%w; our hub: %s", err, line)
			}
		}
		return c, err
	}
	c.AllRoutes = at.Sub(t0)
	for _, l := range strings.Split(gen.Output(), "\n")[from:] {
		if strings.HasPrefix(l, "DOWN ") {
			c.Flaps++
			if c.Flaps <= 3 {
				fmt.Fprintf(os.Stderr, "session down: %s\n", l)
			}
		}
	}
	memAfter, heapAfter, err := memory(ctx, hub, frrHub)
	if err != nil {
		return c, err
	}
	c.MemPerNeighbor = float64(memAfter-memBefore) / float64(o.N)
	c.HeapPerNeighbor = (float64(heapAfter) - float64(heapBefore)) / float64(o.N)
	if hub != nil {
		line, err := ask(ctx, hub, "FIB 5000", `^(FIB|ERR) `)
		if err != nil {
			return c, err
		}
		if c.FIBAlone, err = strconv.ParseFloat(strings.TrimPrefix(line, "FIB "), 64); err != nil {
			return c, fmt.Errorf("FIB: %s", line)
		}
	}
	return c, nil
}

// startRole starts this binary in a node in a role and waits for READY.
func startRole(ctx context.Context, n *testbed.Node, exe, role string, env ...string) (*testbed.Proc, error) {
	p, err := n.Start(testbed.ProcSpec{Name: role, Args: []string{exe}, Env: append([]string{envRole + "=" + role}, env...), Stdin: true})
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, _, err := p.WaitFor(wctx, regexp.MustCompile(`^READY`), 0); err != nil {
		p.Stop()
		return nil, fmt.Errorf("%s: %w\n%s", role, err, p.Output())
	}
	return p, nil
}

// lines is how many lines a process has printed.
func lines(p *testbed.Proc) int { return strings.Count(p.Output(), "\n") }

// waitStamp waits for a line matching re after line from and returns the
// time (Unix nanoseconds) it carries.
func waitStamp(ctx context.Context, p *testbed.Proc, re string, from int, timeout time.Duration) (time.Time, error) {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	rx := regexp.MustCompile(re)
	line, _, err := p.WaitFor(wctx, rx, from)
	if err != nil {
		return time.Time{}, fmt.Errorf("%w\n%s", err, tail(p.Output()))
	}
	m := rx.FindStringSubmatch(line)
	ns, err := strconv.ParseInt(m[len(m)-1], 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q: %w", line, err)
	}
	return time.Unix(0, ns), nil
}

// ask sends a command and returns the answer line matching re.
func ask(ctx context.Context, p *testbed.Proc, cmd, re string) (string, error) {
	from := lines(p)
	if err := p.Send(cmd); err != nil {
		return "", err
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	line, _, err := p.WaitFor(wctx, regexp.MustCompile(re), from)
	if err != nil {
		return "", fmt.Errorf("%s: %w\n%s", cmd, err, tail(p.Output()))
	}
	return line, nil
}

func tail(s string) string {
	ls := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(ls[max(0, len(ls)-20):], "\n")
}

// version returns the version of a module this binary was built with.
func version(path string) string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == path {
				return d.Version
			}
		}
	}
	return "?"
}

// frrVersion is the installed bgpd's version.
func frrVersion() string {
	out, err := exec.Command(filepath.Join(frrDir, "bgpd"), "--version").Output()
	if err != nil {
		return "?"
	}
	f := strings.Fields(strings.SplitN(string(out), "\n", 2)[0])
	return f[len(f)-1]
}

// median returns the median of f over the rounds.
func median[R any](rounds []R, f func(R) float64) float64 {
	if len(rounds) == 0 {
		return 0
	}
	v := make([]float64, len(rounds))
	for i, r := range rounds {
		v[i] = f(r)
	}
	slices.Sort(v)
	return v[len(v)/2]
}
