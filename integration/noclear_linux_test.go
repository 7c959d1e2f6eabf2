package integration

import (
	"context"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/opendmvpn/dmvpn/gre/ebpf"
	"github.com/opendmvpn/dmvpn/integration/vm"
	"github.com/opendmvpn/dmvpn/lab/testbed"
)

// TestNoClearGRE proves issue 14's "no GRE in clear on any path" across
// the life of the daemons, for every combination of data plane and IPsec
// mode dmvpnd accepts: userspace and ebpf with userspace ESP
// (kernel-libipsec) here; in a VM, the kernel data plane with kernel ESP
// and the two others (kernel with userspace ESP, userspace with kernel
// ESP). In one topology per combination (a hub and two spokes with a LAN
// host each), with traffic flowing spoke to spoke (LAN 1 → LAN 2 over
// the shortcut) and through the hub (spoke 2 takes no shortcuts: its
// replies and its pings to the hub cross the hub), the hub's and then
// spoke 1's dmvpnd are (a) stopped with --keep-routes, (b) SIGKILLed,
// each time (c) started again; on the TUN data planes spoke 2 (started
// without --keep-routes) is SIGKILLed and started again. The two
// combinations appliances do not run get one crash (the hub) and one
// stop (spoke 1), each a VM run of minutes. Each outage lasts until the
// peers' SAs with the node are gone and traffic was sent into it or
// toward it since. The internet router counts what
// it forwards (nftables, lossless) and captures everything: 0 GRE in
// clear but the GRE the test injected itself at the start and at the
// end, from a spoke's address around every rule and SA, which proves
// both would have seen GRE in clear.
//
// On the ebpf data plane the spokes attach with clsact filters
// (DMVPN_EBPF_ATTACH=tc), which outlive a SIGKILL (the hub's TCX links
// die with the process): the test checks they are still there while the
// spoke is dead and LAN traffic enters its kept TUN, so the stale fast
// path, with charon gone, is what decides — and sends nothing in clear.
func TestNoClearGRE(t *testing.T) {
	t.Parallel() // the kernel halves boot VMs: let them overlap the other tests
	for _, c := range []struct{ name, dataplane, mode string }{
		{"userspace", "userspace", "userspace"},
		{"ebpf", "ebpf", "userspace"},
		{"kernel", "kernel", "kernel"},
		// The other combinations dmvpnd accepts (kernel ESP with ebpf is
		// refused at --check), in the VM: ip_gre or kernel ESP.
		{"kernel-userspace-esp", "kernel", "userspace"},
		{"userspace-kernel-esp", "userspace", "kernel"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			if c.dataplane == "kernel" || c.mode == "kernel" {
				if needVM(t) {
					requireCharon(t)
					cfg := vmConfig()
					cfg.Timeout = 8 * time.Minute
					cfg.Env = append(os.Environ(), envGREInject+"="+vm.GoBuild(t, "./integration/cmd/greinject"))
					startGuest(t, cfg).wait()
					return
				}
				needKernelGRE(t)
			}
			requireTestbed(t)
			requireCharon(t)
			if c.dataplane == "ebpf" {
				needBPF(t)
			}
			testNoClearGRE(t, c.dataplane, c.mode)
		})
	}
}

// The topology of TestNoClearGRE.
var (
	ncS1NBMA = netip.MustParseAddr("198.51.100.1")
	ncS2NBMA = netip.MustParseAddr("198.51.100.65")
)

// ncInjectKey is the GRE key of the injected packets, apart from the
// tunnel's (42).
const ncInjectKey = 4242

// ncNode is one daemon of the topology and what its outage needs.
type ncNode struct {
	d      *daemonNode
	nbma   netip.Addr
	routes []string // the test's routes through the tunnel, added again after a restart
}

func testNoClearGRE(t *testing.T, dataplane, mode string) {
	var mods []string
	if mode == "kernel" {
		mods = append(mods, "esp4", "xfrm_user")
	}
	if vm.InGuest() && (mode == "userspace" || dataplane != "kernel") {
		mods = append(mods, "tun") // charon's libipsec, the TUN data planes
	}
	for _, m := range mods {
		if out, err := execOut("modprobe", m); err != nil {
			t.Fatalf("modprobe %s: %v: %s", m, err, out)
		}
	}
	wait := 30 * time.Second
	if vm.InGuest() {
		wait = 90 * time.Second // TCG, every process start dear
	}
	inj := os.Getenv(envGREInject)
	if inj == "" {
		inj = vm.GoBuild(t, "./integration/cmd/greinject")
	}
	p := newTestPKI(t)
	p.mode = mode
	t.Cleanup(func() { p.dumpLogs() })
	bin := buildDmvpnd(t)
	spec := testbed.Spec{Sites: []testbed.Site{
		{Name: "hub", Kind: testbed.Hub, NBMA: netip.PrefixFrom(e2eHubNB, 24)},
		{Name: "s1", Kind: testbed.Spoke, NBMA: netip.PrefixFrom(ncS1NBMA, 26), LAN: netip.MustParsePrefix("10.1.0.1/24"), Hosts: 1},
		{Name: "s2", Kind: testbed.Spoke, NBMA: netip.PrefixFrom(ncS2NBMA, 26), LAN: netip.MustParsePrefix("10.2.0.1/24"), Hosts: 1},
	}}
	tb, err := testbed.New(context.Background(), spec, testbed.WithLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tb.Close() })

	// The judges: what the internet router forwards, counted, and all it
	// sees, captured.
	all := startFullCapture(t, tb.Node("inet"))
	fwd := countForwarded(t, tb.Node("inet"), map[string]string{
		"clear_gre":    "meta l4proto gre",
		"injected_gre": fmt.Sprintf("meta l4proto gre @th,32,32 %d", ncInjectKey),
		"esp_all":      "meta l4proto esp",
		"ike_all":      "udp dport { 500, 4500 }",
	})
	marker := []byte("dmvpn-noclear-probe")
	const injectN = 5
	inject := func(when string) {
		t.Helper()
		before := fwd.value("injected_gre")
		if out, err := tb.Node("s1").Run(context.Background(), inj, "-src", ncS1NBMA.String(), "-dst", ncS2NBMA.String(),
			"-key", fmt.Sprint(ncInjectKey), "-proto", "0x0800", "-payload", hex.EncodeToString(marker), "-n", fmt.Sprint(injectN)); err != nil {
			t.Fatalf("greinject: %v: %s", err, out)
		}
		waitFor(t, 10*time.Second, "the internet router to forward the injected GRE "+when, func() bool {
			return fwd.value("injected_gre") >= before+injectN
		})
	}
	// The proof that the judges see GRE in clear: a spoke sends some.
	inject("before the daemons start")
	if c := fwd.get(); c["clear_gre"] != injectN {
		t.Fatalf("before any daemon ran, the internet router forwarded %d GRE packets, want the %d injected", c["clear_gre"], injectN)
	}

	// What enters each site from its LAN (the traffic an outage must
	// meet), and what a spoke forwards from its LAN straight out of its
	// uplink (inner traffic in clear once the tunnel's routes are gone);
	// what the hub relays from its tunnel back into it.
	lanCount := map[string]*nftCounters{}
	for _, s := range []string{"s1", "s2"} {
		lanCount[s] = countForwarded(t, tb.Node(s), map[string]string{
			"from_lan": `iifname "lan0"`, "lan_clear": `iifname "lan0" oifname "wan0"`,
		})
	}
	relay := countForwarded(t, tb.Node("hub"), map[string]string{"relayed": relayedOn("gre1")})

	var env []string
	if dataplane == "ebpf" {
		env = []string{ebpf.AttachEnv + "=tc"} // for the spokes: filters that outlive the process
	}
	// firewall: off on every node: what is judged is the protection of
	// the data planes and of host beneath the firewall, which the
	// baseline's output rule (kept with --keep-routes, alive after a
	// SIGKILL) would mask — and it would refuse the proof GRE s1 sends.
	const noFirewall = "firewall: off\n"
	hub := &ncNode{nbma: e2eHubNB, routes: []string{
		fmt.Sprintf("route replace %s via %s dev gre1 onlink", e2eLAN[0], e2eTunnel[0]),
		fmt.Sprintf("route replace %s via %s dev gre1 onlink", e2eLAN[1], e2eTunnel[1]),
	}}
	hub.d = startDaemon(t, bin, tb.Node("hub"), hubYAML(dataplane)+p.node("hub", "C=FI, O=Example, OU=GRE=10.0.0.1, OU=AS=65000, CN=hub", "")+noFirewall, "--keep-routes")
	spokeRoute := []string{"route replace 10.0.0.0/8 via 10.0.0.1 dev gre1 onlink"}
	s1 := &ncNode{nbma: ncS1NBMA, routes: spokeRoute}
	s1.d = startDaemonEnv(t, bin, tb.Node("s1"), spokeYAML("s1", dataplane, e2eTunnel[0].String(), e2eLAN[0].String())+
		p.node("s1", "C=FI, O=Example, OU=GRE=10.0.0.11, OU=AS=65011, OU=NET=10.1.0.0/24, CN=s1", "")+noFirewall, env, "--keep-routes")
	// Spoke 2 takes no shortcut: what it sends to LAN 1 crosses the hub.
	s2YAML := strings.Replace(spokeYAML("s2", dataplane, e2eTunnel[1].String(), e2eLAN[1].String()), "shortcut: true", "shortcut: false", 1)
	s2 := &ncNode{nbma: ncS2NBMA, routes: spokeRoute}
	s2.d = startDaemonEnv(t, bin, tb.Node("s2"), s2YAML+
		p.node("s2", "C=FI, O=Example, OU=GRE=10.0.0.12, OU=AS=65012, OU=NET=10.2.0.0/24, CN=s2", "")+noFirewall, env)
	for _, n := range []*ncNode{hub, s1, s2} {
		if err := n.d.node.IP(n.routes...); err != nil {
			t.Fatal(err)
		}
	}
	// On a failure: what the stopped daemons said, and each site's
	// kernel state.
	var stopped []*testbed.Proc
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, pr := range stopped {
			out := pr.Output()
			if len(out) > 6000 {
				out = out[len(out)-6000:]
			}
			t.Logf("%s (stopped) said:\n%s", pr.Name, out)
		}
		for _, n := range []string{"hub", "s1", "s2"} {
			var b strings.Builder
			for _, args := range [][]string{{"-s", "link"}, {"rule"}, {"route", "show", "table", "all"}, {"neigh"}, {"xfrm", "policy"}, {"-s", "xfrm", "state"}} {
				out, _ := tb.Node(n).Run(context.Background(), append([]string{"ip"}, args...)...)
				fmt.Fprintf(&b, "ip %s:\n%s\n", strings.Join(args, " "), out)
			}
			out, _ := tb.Node(n).Run(context.Background(), "nft", "list", "ruleset")
			t.Logf("%s:\n%snft list ruleset:\n%s", n, b.String(), out)
		}
	})
	x := &e2e{t: t, tb: tb, hub: hub.d, spokes: []*daemonNode{s1.d, s2.d}, hosts: []*testbed.Node{tb.Node("s1-h1"), tb.Node("s2-h1")}}
	nodes := []*ncNode{hub, s1, s2}

	waitFor(t, wait, "both spokes registered over IPsec", x.allRegistered)
	for _, n := range nodes {
		if err := protected(t, n.d.node, mode); err != nil {
			t.Fatalf("%s while dmvpnd runs: %v", n.d.name, err)
		}
	}

	// Traffic for the whole test: LAN 1 to LAN 2 (requests over the
	// shortcut, replies through the hub) and LAN 2 to the hub.
	h1, h2 := x.hosts[0], x.hosts[1]
	hubTunnel := netip.MustParseAddr("10.0.0.1")
	pings := map[string]*testbed.Proc{}
	for _, pg := range []struct {
		name string
		from *testbed.Node
		to   netip.Addr
	}{{"LAN 1 → LAN 2", h1, h2.Addr}, {"LAN 2 → hub", h2, hubTunnel}} {
		pr, err := pg.from.Start(testbed.ProcSpec{Name: "ping-" + pg.to.String(),
			Args: []string{"ping", "-n", "-D", "-i", "0.1", "-W", "1", "-c", "9000", pg.to.String()}}) // not -w: it ends at the first error
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pr.Stop)
		t.Cleanup(func() {
			if out := pr.Output(); t.Failed() {
				if len(out) > 3000 {
					out = out[len(out)-3000:]
				}
				t.Logf("%s:\n%s", pr.Name, out)
			}
		})
		pings[pg.name] = pr
	}
	// Both spokes reach the hub's tunnel address: registered, with SAs.
	reachHub := func() {
		t.Helper()
		waitFor(t, wait, "both LANs reaching the hub", func() bool {
			_, err1 := pingTTL(t, h1, hubTunnel)
			_, err2 := pingTTL(t, h2, hubTunnel)
			return err1 == nil && err2 == nil
		})
	}
	reachHub()
	r0 := relay.value("relayed")
	waitFor(t, wait, "LAN 1 reaching LAN 2", func() bool { _, err := pingTTL(t, h1, h2.Addr); return err == nil })
	waitFor(t, wait, "spoke 1's shortcut to LAN 2", func() bool { _, ok := x.shortcut(0, 1); return ok })
	waitFor(t, wait, "the hub to relay spoke 2's traffic to spoke 1", func() bool { return relay.value("relayed") > r0 })
	t.Logf("%s data plane, %s ESP: up, traffic flowing over the shortcut and through the hub; the internet router forwarded so far %s",
		dataplane, mode, counts(fwd.get()))

	// The outages, one after the other.
	type step struct {
		n        *ncNode
		kill     bool
		what     string
		up       time.Time // when it was started again
		counts   string
		lanClear uint64 // LAN packets the node forwarded out of its uplink
	}
	steps := []*step{{n: hub}, {n: hub, kill: true}, {n: s1}, {n: s1, kill: true}}
	switch {
	case dataplane != mode:
		// The combinations appliances do not run (each a VM run of
		// minutes): one stop with --keep-routes, one crash.
		steps = []*step{{n: hub, kill: true}, {n: s1}}
	case dataplane != "kernel":
		// Without --keep-routes, its TUN (and every route through it)
		// dies with it; the kernel's ip_gre device would not.
		steps = append(steps, &step{n: s2, kill: true})
	}
	for _, st := range steps {
		n := st.n
		keep := contains(n.d.args, "--keep-routes")
		st.what = n.d.name + " stopped with --keep-routes"
		if st.kill {
			st.what = n.d.name + " SIGKILLed"
			if !keep {
				st.what += " (started without --keep-routes)"
			}
		}
		before := fwd.get()
		lanBefore := map[string]uint64{}
		for s, c := range lanCount {
			lanBefore[s] = c.value("lan_clear")
		}
		down := time.Now()
		stopped = append(stopped, n.d.proc)
		if st.kill {
			n.d.kill()
		} else {
			n.d.stop()
		}
		// The outage: until no peer has an SA with the node (unless its
		// charon outlives dmvpnd, keeping them), then until traffic
		// entered the node (a spoke) or its peers (the hub).
		charonUp := charonRunning(filepath.Join(p.dir, "state-"+n.d.name))
		if !charonUp {
			waitFor(t, wait, "the peers' SAs with "+n.d.name+" to end", func() bool {
				for _, o := range nodes {
					if o != n && o.d.saUpWith(n.nbma) {
						return false
					}
				}
				return true
			})
		} else {
			t.Logf("%s: its charon runs on, and its SAs with it", st.what)
		}
		tunKept := strings.Contains(ipOut(t, n.d.node, "link", "show"), " gre1")
		senders := []string{"s1", "s2"}
		if n != hub {
			senders = []string{n.d.name}
		}
		lanTraffic := func() {
			t.Helper()
			for _, s := range senders {
				c := lanCount[s]
				f0 := c.value("from_lan")
				waitFor(t, wait, "traffic from "+s+"'s LAN during the outage of "+n.d.name, func() bool { return c.value("from_lan") >= f0+10 })
			}
		}
		lanTraffic()
		if err := protected(t, n.d.node, mode); err != nil && keep {
			t.Errorf("%s: the protection of GRE is not kept: %v", st.what, err)
		}
		if dataplane == "ebpf" && st.kill {
			left := bpfLeftovers(t, n.d.node.NS)
			t.Logf("%s: BPF attachments left on its interfaces while it is dead: %v", st.what, left)
			if n == s1 {
				// The stale fast path alone: without the rules of the
				// protection, with charon gone, GRE must still not leave.
				// A charon that outlived dmvpnd dies now as well.
				if charonUp {
					dir := filepath.Join(p.dir, "state-"+n.d.name)
					syscall.Kill(charonPID(t, dir), syscall.SIGKILL)
					waitFor(t, wait, n.d.name+"'s charon to die", func() bool { return !charonRunning(dir) })
					waitFor(t, wait, "the peers' SAs with "+n.d.name+" to end", func() bool {
						return !hub.d.saUpWith(n.nbma) && !s2.d.saUpWith(n.nbma)
					})
					charonUp = false
				}
				filters, _ := n.d.node.Run(context.Background(), "tc", "filter", "show", "dev", "gre1", "egress")
				if !strings.Contains(filters, "dmvpn:gre1") {
					t.Errorf("%s: no clsact filter left on its kept TUN: the stale fast path is not met\n%s", st.what, filters)
				}
				if err := n.d.node.IP("rule del priority 221", "rule del priority 219", "rule del priority 222"); err != nil {
					t.Fatal(err)
				}
				t.Logf("%s: its kept TUN's egress filter %q; the protection's rules deleted, the stale fast path alone decides (charon running: %v)",
					st.what, strings.TrimSpace(strings.SplitN(filters, "\n", 2)[0]), charonUp)
				lanTraffic()
			}
		}
		during := fwd.get()
		outage := time.Since(down)

		// (c) started again: it registers, takes its protection back and
		// the LANs reach the hub.
		st.up = time.Now()
		n.d.start()
		if err := n.d.node.IP(n.routes...); err != nil {
			t.Fatal(err)
		}
		waitFor(t, wait, n.d.name+" registered again", func() bool {
			switch n {
			case s1:
				return x.registeredSince(0, st.up)
			case s2:
				return x.registeredSince(1, st.up)
			}
			return x.registeredSince(0, st.up) && x.registeredSince(1, st.up)
		})
		if err := protected(t, n.d.node, mode); err != nil {
			t.Errorf("%s, started again: %v", st.what, err)
		}
		reachHub()
		for s, c := range lanCount {
			st.lanClear += c.value("lan_clear") - lanBefore[s]
		}
		st.counts = fmt.Sprintf("outage %v: %s; started again, back %v later: %s", outage.Round(time.Millisecond),
			counts(diff(before, during)), time.Since(st.up).Round(time.Millisecond), counts(diff(during, fwd.get())))
		t.Logf("%s: %s", st.what, st.counts)
		if st.lanClear > 0 {
			msg := fmt.Sprintf("%s: %d LAN packets forwarded out of the uplink in clear (no route through the tunnel)", st.what, st.lanClear)
			if tunKept {
				t.Error(msg)
			} else {
				// The TUN died with the process, and every route
				// through it (issue 14 part 4).
				t.Log(msg + ": its TUN died with it")
			}
		}
	}
	waitFor(t, 2*wait, "LAN 1 reaching LAN 2 after the last restart", func() bool { _, err := pingTTL(t, h1, h2.Addr); return err == nil })
	for _, pr := range pings {
		pr.Stop()
	}
	// When each ping came back after each restart (spoke to spoke may
	// wait for a kept neighbour entry to fail before it resolves again).
	var lines []string
	for _, st := range steps {
		back := []string{}
		for _, name := range []string{"LAN 1 → LAN 2", "LAN 2 → hub"} {
			if r, ok := firstReplyAfter(pings[name].Output(), st.up); ok {
				back = append(back, fmt.Sprintf("%s back %v after the start", name, r.Sub(st.up).Round(100*time.Millisecond)))
			} else {
				back = append(back, name+" not back")
			}
		}
		lines = append(lines, fmt.Sprintf("%s: %s; %s", st.what, st.counts, strings.Join(back, ", ")))
	}
	t.Logf("%s data plane, %s ESP:\n%s", dataplane, mode, strings.Join(lines, "\n"))

	// The end: the proof again, then the judges' verdicts.
	inject("after the last restart")
	end := fwd.get()
	t.Logf("the internet router forwarded in all: %s", counts(end))
	if n := end["clear_gre"] - end["injected_gre"]; n != 0 {
		t.Errorf("the internet router forwarded %d GRE packets in clear that the test did not inject", n)
	}
	if end["injected_gre"] != 2*injectN {
		t.Errorf("the internet router forwarded %d injected GRE packets, want %d", end["injected_gre"], 2*injectN)
	}
	if end["esp_all"]+end["ike_all"] == 0 {
		t.Error("no ESP or IKE forwarded")
	}
	wc := countWire(t, all.stop(), marker, ncS1NBMA, ncS2NBMA)
	inner := innerInClear(t, all.path)
	t.Logf("capture on the internet router: %d ESP, %d IKE (UDP 500/4500), %d GRE (%d injected), %d other (%d with tunnel-side addresses); %s",
		wc.esp, wc.ike, wc.gre, wc.injected, wc.other, inner, tcpdumpDrops(all))
	if wc.gre != wc.injected {
		t.Errorf("the capture holds %d GRE packets in clear that were not injected", wc.gre-wc.injected)
	}
	if wc.injected == 0 {
		t.Error("the capture lacks the injected GRE: it proves nothing")
	}
	if wc.esp+wc.ike == 0 || wc.spokeToSpoke == 0 {
		t.Error("the capture lacks ESP or IKE, or anything between the spokes")
	}
}

// protected says what is missing of the protection of GRE in a node's
// kernel (nil when it is all there): the catch-all xfrm block policies
// of kernel ESP, or the rule that prohibits GRE without an SA route of
// userspace ESP.
func protected(t testing.TB, n *testbed.Node, mode string) error {
	t.Helper()
	if mode == "kernel" {
		if b := xfrmBlocks(t, n); len(b) != 2 {
			return fmt.Errorf("%d catch-all GRE block policies, want 2:\n%s", len(b), strings.Join(b, "\n"))
		}
		return nil
	}
	rules := ipOut(t, n, "-4", "rule", "list")
	for _, l := range strings.Split(rules, "\n") {
		if strings.HasPrefix(l, "221:") && strings.Contains(l, "ipproto gre") && strings.Contains(l, "prohibit") {
			return nil
		}
	}
	return fmt.Errorf("no rule 221 prohibiting GRE:\n%s", rules)
}

// counts renders the internet router's counters.
func counts(c map[string]uint64) string {
	return fmt.Sprintf("%d GRE (%d injected), %d ESP, %d IKE/NAT-T", c["clear_gre"], c["injected_gre"], c["esp_all"], c["ike_all"])
}

func diff(a, b map[string]uint64) map[string]uint64 {
	d := map[string]uint64{}
	for k, v := range b {
		d[k] = v - a[k]
	}
	return d
}

// innerInClear counts the captured IPv4 packets whose source or
// destination is a tunnel-side address (10.0.0.0/8): traffic of the
// tunnel or the LANs on the underlay, outside any tunnel.
func innerInClear(t testing.TB, path string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	inner := netip.MustParsePrefix("10.0.0.0/8")
	n := 0
	for p := range gopacket.NewPacketSource(r, r.LinkType()).Packets() {
		ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		if ip == nil {
			continue
		}
		src, _ := netip.AddrFromSlice(ip.SrcIP)
		dst, _ := netip.AddrFromSlice(ip.DstIP)
		if inner.Contains(src) || inner.Contains(dst) {
			n++
		}
	}
	return n
}

// charonRunning reports whether a node's managed charon (found by its
// configuration file) is running.
func charonRunning(stateDir string) bool {
	want := "STRONGSWAN_CONF=" + filepath.Join(stateDir, "strongswan.conf")
	procs, _ := filepath.Glob("/proc/[0-9]*/environ")
	for _, e := range procs {
		env, err := os.ReadFile(e)
		if err != nil || !strings.Contains(string(env), want) {
			continue
		}
		comm, _ := os.ReadFile(filepath.Join(filepath.Dir(e), "comm"))
		stat, _ := os.ReadFile(filepath.Join(filepath.Dir(e), "stat"))
		if f := strings.Fields(string(stat)); strings.TrimSpace(string(comm)) == "charon" && len(f) > 2 && f[2] != "Z" {
			return true
		}
	}
	return false
}

// firstReplyAfter returns the time of the first reply after t in the
// output of ping -D.
func firstReplyAfter(out string, t time.Time) (time.Time, bool) {
	for _, l := range strings.Split(out, "\n") {
		var sec, usec int64
		if !strings.Contains(l, "bytes from") {
			continue
		}
		if _, err := fmt.Sscanf(l, "[%d.%d]", &sec, &usec); err != nil {
			continue
		}
		if r := time.Unix(sec, usec*1000); r.After(t) {
			return r, true
		}
	}
	return time.Time{}, false
}

func execOut(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}
