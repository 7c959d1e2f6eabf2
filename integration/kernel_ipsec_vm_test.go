package integration

import (
	"context"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/integration/vm"
	"github.com/opendmvpn/dmvpn/lab/testbed"
	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// envGREInject names greinject as the host half built it (the guest has
// no business running the Go tool chain under TCG).
const envGREInject = "DMVPN_TEST_GREINJECT"

// TestKernelIPsecInVM runs the production configuration — the kernel data
// plane (ip_gre) with kernel ESP (strongSwan's kernel-netlink, transport
// mode, proto gre selectors) — in a VM with Debian's kernel when this one
// lacks ip_gre: a hub, two spokes with LANs and a rogue spoke (same CA,
// its certificate names spoke 1's tunnel address).
//
//	hub    192.0.2.1       tunnel 10.0.0.1
//	s1     198.51.100.1    tunnel 10.0.0.11  LAN 10.1.0.0/24 (host 10.1.0.2)
//	s2     198.51.100.65   tunnel 10.0.0.12  LAN 10.2.0.0/24 (host 10.2.0.2)
//	rogue  198.51.100.129  tunnel 10.0.0.22, certificate OU=GRE=10.0.0.11
//
// It checks: registrations authorised by certificate (the identity on the
// binding) over transport-mode SAs; the rogue refused, audited, its SA
// terminated and refused again over the next; a spoke-to-spoke shortcut
// over an SA of its own that carries the traffic; plaintext GRE from a
// spoke's address dropped by the kernel's policy check (xfrm_stat), with
// no binding; the catch-all xfrm block policies there while dmvpnd runs
// and gone, with every other policy and SA, when it stops; and on the
// internet router only IKE and ESP (no GRE, so no NHRP, in clear) but
// the injected packets, from the first packet to the last daemon's exit.
func TestKernelIPsecInVM(t *testing.T) {
	t.Parallel() // boots a VM: let it overlap the other VM tests
	if needVM(t) {
		requireCharon(t)
		runGuestWithGREInject(t)
		return
	}
	needKernelGRE(t)
	requireCharon(t)
	modprobe(t, "esp4", "xfrm_user")
	inj := os.Getenv(envGREInject)
	if inj == "" {
		inj = vm.GoBuild(t, "./integration/cmd/greinject")
	}
	begin := time.Now()
	p := newTestPKI(t)
	p.mode = "kernel"
	t.Cleanup(func() { p.dumpLogs() })
	bin := buildDmvpnd(t)
	s1NBMA, s2NBMA, rogueNBMA := netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.51.100.65"), netip.MustParseAddr("198.51.100.129")
	spec := testbed.Spec{Sites: []testbed.Site{
		{Name: "hub", Kind: testbed.Hub, NBMA: netip.MustParsePrefix("192.0.2.1/24")},
		{Name: "s1", Kind: testbed.Spoke, NBMA: netip.PrefixFrom(s1NBMA, 26), LAN: netip.MustParsePrefix("10.1.0.1/24"), Hosts: 1},
		{Name: "s2", Kind: testbed.Spoke, NBMA: netip.PrefixFrom(s2NBMA, 26), LAN: netip.MustParsePrefix("10.2.0.1/24"), Hosts: 1},
		{Name: "rogue", Kind: testbed.Spoke, NBMA: netip.PrefixFrom(rogueNBMA, 26), LAN: netip.MustParsePrefix("10.9.0.1/24")},
	}}
	tb, err := testbed.New(context.Background(), spec, testbed.WithLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tb.Close() })
	all := startFullCapture(t, tb.Node("inet"))
	// What the internet router forwards, counted without loss (the
	// capture may drop packets under load): no GRE at all.
	fwd := countForwarded(t, tb.Node("inet"), map[string]string{
		"clear_gre": "meta l4proto gre", "esp_all": "meta l4proto esp", "ike_all": "udp dport { 500, 4500 }",
		"esp_s1_s2": fmt.Sprintf("ip saddr %s ip daddr %s meta l4proto esp", s1NBMA, s2NBMA),
	})

	started := time.Now()
	// firewall: off — what is tested is the kernel's own xfrm policy
	// check on GRE in clear, which the baseline policy would stop before it.
	hub := startDaemon(t, bin, tb.Node("hub"), hubYAML("kernel")+p.node("hub", "C=FI, O=Example, OU=GRE=10.0.0.1, OU=AS=65000, CN=hub", "")+"firewall: off\n")
	t.Logf("hub up in %v", time.Since(started).Round(time.Millisecond))
	// Before the hub's state directory (under /run) is removed.
	t.Cleanup(func() { charonTrouble(t, p) })
	var routes []string
	for i := range 2 {
		routes = append(routes, fmt.Sprintf("route add %s via %s dev gre1 onlink", e2eLAN[i], e2eTunnel[i]))
	}
	if err := tb.Node("hub").IP(routes...); err != nil {
		t.Fatal(err)
	}
	// The block policies are there before any spoke can send.
	if b := xfrmBlocks(t, tb.Node("hub")); len(b) != 2 {
		t.Errorf("the hub's catch-all GRE block policies: %d, want 2 (in, out):\n%s", len(b), strings.Join(b, "\n"))
	}
	spoke := func(name string, tunnel netip.Addr, lan, dn string, args ...string) *daemonNode {
		start := time.Now()
		d := startDaemon(t, bin, tb.Node(name), spokeYAML(name, "kernel", tunnel.String(), lan)+p.node(name, dn, "")+"firewall: off\n", args...)
		t.Logf("%s up in %v", name, time.Since(start).Round(time.Millisecond))
		if err := tb.Node(name).IP("route add 10.0.0.0/8 via 10.0.0.1 dev gre1 onlink"); err != nil {
			t.Fatal(err)
		}
		return d
	}
	s1 := spoke("s1", e2eTunnel[0], "10.1.0.0/24", "C=FI, O=Example, OU=GRE=10.0.0.11, OU=AS=65011, OU=NET=10.1.0.0/24, CN=s1")
	s2 := spoke("s2", e2eTunnel[1], "10.2.0.0/24", "C=FI, O=Example, OU=GRE=10.0.0.12, OU=AS=65012, OU=NET=10.2.0.0/24, CN=s2")
	rogueStart := time.Now()
	rogue := spoke("rogue", netip.MustParseAddr("10.0.0.22"), "10.9.0.0/24", "C=FI, O=Example, OU=GRE=10.0.0.11, OU=AS=65011, CN=rogue",
		"--unchecked-credentials") // its own dmvpnd would refuse a certificate naming another address
	x := &e2e{t: t, tb: tb, hub: hub, spokes: []*daemonNode{s1, s2}, hosts: []*testbed.Node{tb.Node("s1-h1"), tb.Node("s2-h1")}}
	t.Logf("topology and four daemons (each with its charon) up in %v", time.Since(started).Round(time.Millisecond))

	// Registrations over transport-mode SAs, authorised by certificate.
	d := waitFor(t, 30*time.Second, "both spokes registered over IPsec", x.allRegistered)
	t.Logf("both spokes registered over kernel IPsec %v after the last daemon answered", d.Round(time.Millisecond))
	for i, nbma := range []netip.Addr{s1NBMA, s2NBMA} {
		e, _ := hub.entry(netip.PrefixFrom(e2eTunnel[i], 32))
		if !strings.Contains(e.Identity, "OU=GRE="+e2eTunnel[i].String()) || len(e.Attrs["AS"]) != 1 || e.NBMA != nbma {
			t.Errorf("spoke %d's binding without its certificate identity: %s", i+1, jsonString(e))
		}
		sa, ok := hub.saWith(nbma)
		if !ok {
			t.Fatalf("the hub has no SA with spoke %d", i+1)
		}
		for _, c := range sa.Children {
			if c.Mode != "TRANSPORT" {
				t.Errorf("the hub's CHILD_SA with spoke %d: mode %s, want TRANSPORT (%s)", i+1, c.Mode, jsonString(c))
			}
		}
		// A spoke that gave up on a slow answer (TCG under load) and
		// tried again leaves the hub IKE SAs it no longer knows: charon
		// ends them (unique replace, DPD) within seconds.
		var st []xfrmState
		start := time.Now()
		for st = xfrmStates(t, tb.Node("hub"), "192.0.2.1", nbma.String()); len(st) > 1 && time.Since(start) < 20*time.Second; {
			time.Sleep(200 * time.Millisecond)
			st = xfrmStates(t, tb.Node("hub"), "192.0.2.1", nbma.String())
		}
		if len(st) != 1 || st[0].mode != "transport" {
			t.Errorf("the hub's kernel ESP states toward spoke %d: %+v, want one in transport mode", i+1, st)
		} else if d := time.Since(start); d > time.Second {
			t.Logf("the hub's duplicate ESP states toward spoke %d gone after %v", i+1, d.Round(time.Millisecond))
		}
		if !xfrmGREPolicy(t, tb.Node("hub"), "192.0.2.1", nbma.String()) {
			t.Errorf("the hub has no transport-mode ESP policy for GRE toward spoke %d", i+1)
		}
	}

	// The rogue: an SA (same CA), a registration refused and audited, the
	// SA terminated; it comes back over a new SA and is refused again.
	audit := filepath.Join(p.dir, "audit-hub.jsonl")
	refusals := func() []auditLine {
		var out []auditLine
		for _, l := range readAudit(t, audit) {
			if l.NBMA == rogueNBMA.String() && l.Event == "registration refused" {
				out = append(out, l)
			}
		}
		return out
	}
	waitFor(t, 45*time.Second, "the rogue refused over two different SAs", func() bool {
		ids := map[string]bool{}
		for _, l := range refusals() {
			ids[l.IKEID] = true
		}
		return len(ids) >= 2
	})
	rf := refusals()
	t.Logf("rogue refused over two SAs (IKE %s, then %s) %v after it started", rf[0].IKEID, rf[len(rf)-1].IKEID, time.Since(rogueStart).Round(time.Millisecond))
	for _, l := range rf {
		if l.Kind != "gre_mismatch" || l.Tunnel != "10.0.0.22" || !strings.Contains(l.Subject, "CN=rogue") || l.Serial == "" || !strings.Contains(l.Reason, "GRE=10.0.0.11") {
			t.Errorf("rogue's audit line: %+v", l)
		}
	}
	if e, ok := hub.entry(netip.MustParsePrefix("10.0.0.22/32")); ok {
		t.Errorf("the rogue has a binding: %s", jsonString(e))
	}
	if e, ok := hub.entry(netip.PrefixFrom(e2eTunnel[0], 32)); !ok || e.NBMA != s1NBMA || !strings.Contains(e.Identity, "CN=s1") {
		t.Errorf("spoke 1's binding after the rogue: %s", jsonString(e))
	}
	_ = rogue

	// A shortcut between the spokes, over a transport-mode SA of its own
	// that carries the traffic.
	h1, h2 := x.hosts[0], x.hosts[1]
	first := time.Now()
	if _, err := pingTTL(t, h1, h2.Addr); err != nil {
		t.Fatal(err)
	}
	// Traffic goes on as a LAN's would: under TCG on a loaded machine the
	// spokes' IKE can outlast a resolution's tries and its negative entry.
	lastPing := time.Now()
	waitFor(t, 40*time.Second, "the shortcuts between LAN 1 and LAN 2", func() bool {
		_, ok1 := x.shortcut(0, 1)
		_, ok2 := x.shortcut(1, 0)
		if !(ok1 && ok2) && time.Since(lastPing) > 2*time.Second {
			pingTTL(t, h1, h2.Addr)
			lastPing = time.Now()
		}
		return ok1 && ok2
	})
	waitFor(t, 30*time.Second, "the SA between spoke 1 and spoke 2", func() bool { return s1.saUpWith(s2NBMA) })
	t.Logf("shortcut and its SA up %v after the first packet", time.Since(first).Round(time.Millisecond))
	esp0 := xfrmStates(t, tb.Node("s1"), s1NBMA.String(), s2NBMA.String())
	for i := range 10 {
		if ttl, err := pingTTL(t, h1, h2.Addr); err != nil || ttl != 62 {
			t.Fatalf("ping %d over the shortcut: TTL %d, %v (want 62: direct)", i, ttl, err)
		}
	}
	esp1 := xfrmStates(t, tb.Node("s1"), s1NBMA.String(), s2NBMA.String())
	if len(esp1) == 0 || esp1[0].mode != "transport" {
		t.Errorf("spoke 1's kernel ESP states toward spoke 2: %+v, want transport mode", esp1)
	} else if len(esp0) == 0 || esp1[0].packets-esp0[0].packets < 10 {
		t.Errorf("spoke 1's ESP SA toward spoke 2 counted %+v then %+v: want ≥ 10 packets more", esp0, esp1)
	}
	if sa, ok := s1.saWith(s2NBMA); ok {
		for _, c := range sa.Children {
			if c.Mode != "TRANSPORT" {
				t.Errorf("spoke 1's CHILD_SA with spoke 2: mode %s", c.Mode)
			}
		}
	}

	// Plaintext GRE (an NHRP registration) from spoke 1's address to the
	// hub, around every SA: the kernel's inbound policy check drops it
	// (spoke 1's SA policy wants ESP), nothing reaches dmvpnd.
	marker := []byte("dmvpn-plaintext-probe")
	inject := func(src netip.Addr) map[string]int {
		t.Helper()
		reg, _ := (&wire.Packet{Type: wire.TypeRegistrationRequest, HopCount: 255, RequestID: 99,
			SrcNBMA: src, SrcProto: netip.MustParseAddr("10.0.0.99"),
			DstProto: netip.MustParseAddr("10.0.0.1"), CIEs: []wire.CIE{{PrefixLen: 255, HoldingTime: 60}},
			Extensions: []wire.Extension{{Type: wire.ExtVendorPrivate, VendorID: 0xffffff, Data: marker}}}).MarshalBinary()
		before := xfrmStat(t, tb.Node("hub"))
		if out, err := tb.Node("inet").Run(context.Background(), inj, "-src", src.String(), "-dst", "192.0.2.1",
			"-key", "42", "-proto", "0x2001", "-payload", hex.EncodeToString(reg), "-n", "20"); err != nil {
			t.Fatalf("greinject: %v: %s", err, out)
		}
		var moved map[string]int
		waitFor(t, 5*time.Second, "the hub's kernel to drop the plaintext GRE", func() bool {
			moved = statDiff(before, xfrmStat(t, tb.Node("hub")))
			return moved["XfrmInTmplMismatch"]+moved["XfrmInPolBlock"]+moved["XfrmInNoPols"] >= 20
		})
		if _, ok := hub.entry(netip.MustParsePrefix("10.0.0.99/32")); ok {
			t.Errorf("plaintext GRE from %s created a binding", src)
		}
		return moved
	}
	moved := inject(s1NBMA)
	t.Logf("20 plaintext GRE packets from spoke 1's address (it has an SA): the hub's xfrm_stat moved %v", moved)
	if moved["XfrmInTmplMismatch"] < 20 {
		t.Errorf("plaintext GRE from spoke 1's address: XfrmInTmplMismatch +%d, want 20 (its SA's inbound policy wants ESP)", moved["XfrmInTmplMismatch"])
	}

	// Spoke 2 stops: its policies and SAs go with it (the block policies
	// included); the hub's SA with it ends, and plaintext GRE from its
	// address now meets the hub's catch-all block policy.
	s2.stop()
	if pol, st := xfrmAll(t, tb.Node("s2")); pol != "" || st != "" {
		t.Errorf("spoke 2's xfrm policies and states after dmvpnd stopped:\n%s\n%s", pol, st)
	}
	// Its CHILD_SAs end with spoke 2's DELETE; an IKE SA without one
	// (half-open from a retransmitted IKE_SA_INIT under TCG) may linger
	// until charon's half-open timeout, and carries nothing.
	waitFor(t, 10*time.Second, "the hub's SAs with spoke 2 to end", func() bool {
		return !hub.saUpWith(s2NBMA) && len(xfrmStates(t, tb.Node("hub"), "192.0.2.1", s2NBMA.String())) == 0
	})
	if left := hub.sasWith(s2NBMA); len(left) > 0 {
		t.Logf("IKE SAs without CHILD_SA left at the hub with spoke 2: %v", left)
	}
	moved = inject(s2NBMA)
	t.Logf("20 plaintext GRE packets from stopped spoke 2's address (no SA): the hub's xfrm_stat moved %v", moved)
	if moved["XfrmInPolBlock"] < 20 {
		t.Errorf("plaintext GRE with no SA: XfrmInPolBlock +%d, want 20 (the catch-all block policy)", moved["XfrmInPolBlock"])
	}

	// The others stop too, the hub first: nothing of IPsec is left in the
	// kernel, and nothing left in clear while they went down.
	hub.stop()
	if pol, st := xfrmAll(t, tb.Node("hub")); pol != "" || st != "" {
		t.Errorf("the hub's xfrm policies and states after dmvpnd stopped:\n%s\n%s", pol, st)
	}
	s1.stop()
	rogue.stop()
	for _, n := range []string{"s1", "rogue"} {
		if pol, st := xfrmAll(t, tb.Node(n)); pol != "" || st != "" {
			t.Errorf("%s's xfrm policies and states after dmvpnd stopped:\n%s\n%s", n, pol, st)
		}
	}

	// On the wire: the router forwarded ESP and IKE, no GRE; the capture
	// shows the same, with the injected packets (the router sent them).
	fc := fwd.get()
	t.Logf("internet router forwarded: %d ESP (%d from spoke 1 to spoke 2), %d IKE, %d GRE", fc["esp_all"], fc["esp_s1_s2"], fc["ike_all"], fc["clear_gre"])
	if fc["clear_gre"] != 0 {
		t.Errorf("the internet router forwarded %d GRE packets: GRE in clear", fc["clear_gre"])
	}
	if fc["esp_all"] == 0 || fc["ike_all"] == 0 {
		t.Error("no ESP or no IKE forwarded")
	}
	if fc["esp_s1_s2"] < 10 {
		t.Errorf("%d ESP packets from spoke 1 to spoke 2, want ≥ 10 (the pings over the shortcut)", fc["esp_s1_s2"])
	}
	wc := countWire(t, all.stop(), marker, s1NBMA, s2NBMA)
	t.Logf("capture on the internet router: %d ESP, %d IKE (UDP 500/4500), %d GRE (%d injected), %d other; %d ESP/IKE between spoke 1 and spoke 2; tcpdump: %s",
		wc.esp, wc.ike, wc.gre, wc.injected, wc.other, wc.spokeToSpoke, tcpdumpDrops(all))
	if wc.gre != wc.injected {
		t.Errorf("%d GRE packets in clear on the wire that were not injected", wc.gre-wc.injected)
	}
	if wc.injected == 0 || wc.esp == 0 || wc.ike == 0 || wc.spokeToSpoke == 0 {
		t.Error("the capture lacks the injected GRE, ESP, IKE or ESP between the spokes")
	}
	t.Logf("whole guest half: %v", time.Since(begin).Round(time.Millisecond))

}

// xfrmBlocks returns a node's catch-all GRE block policies.
func xfrmBlocks(t testing.TB, n *testbed.Node) []string {
	t.Helper()
	var out []string
	for _, b := range xfrmBlocksOf(ipOut(t, n, "xfrm", "policy", "list")) {
		if strings.HasPrefix(b, "src 0.0.0.0/0 dst 0.0.0.0/0 proto gre") && strings.Contains(b, "action block") {
			out = append(out, b)
		}
	}
	return out
}

// xfrmGREPolicy reports whether a node has an outbound policy for GRE
// from src to dst that wants ESP in transport mode.
func xfrmGREPolicy(t testing.TB, n *testbed.Node, src, dst string) bool {
	t.Helper()
	for _, b := range xfrmBlocksOf(ipOut(t, n, "xfrm", "policy", "list")) {
		if strings.HasPrefix(b, "src "+src+"/32 dst "+dst+"/32 proto gre") && strings.Contains(b, "dir out") &&
			strings.Contains(b, "proto esp") && strings.Contains(b, "mode transport") {
			return true
		}
	}
	return false
}

// xfrmState is an ESP state of the kernel.
type xfrmState struct {
	mode    string
	packets int
}

var (
	reXfrmMode    = regexp.MustCompile(`\bmode (\w+)`)
	reXfrmPackets = regexp.MustCompile(`lifetime current:\s+\d+\(bytes\), (\d+)\(packets\)`)
)

// xfrmStates returns a node's ESP states from src to dst.
func xfrmStates(t testing.TB, n *testbed.Node, src, dst string) []xfrmState {
	t.Helper()
	var out []xfrmState
	for _, b := range xfrmBlocksOf(ipOut(t, n, "-s", "xfrm", "state", "list")) {
		if !strings.HasPrefix(b, "src "+src+" dst "+dst+"\n") || !strings.Contains(b, "proto esp") {
			continue
		}
		var s xfrmState
		if m := reXfrmMode.FindStringSubmatch(b); m != nil {
			s.mode = m[1]
		}
		if m := reXfrmPackets.FindStringSubmatch(b); m != nil {
			s.packets, _ = strconv.Atoi(m[1])
		}
		out = append(out, s)
	}
	return out
}

// xfrmAll returns all of a node's xfrm policies and states, as ip prints
// them.
func xfrmAll(t testing.TB, n *testbed.Node) (policies, states string) {
	t.Helper()
	return strings.TrimSpace(ipOut(t, n, "xfrm", "policy", "list")), strings.TrimSpace(ipOut(t, n, "xfrm", "state", "list"))
}

// xfrmBlocksOf splits `ip xfrm` output into its entries (each starts
// with "src " at the start of a line).
func xfrmBlocksOf(s string) []string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		switch {
		case strings.HasPrefix(line, "src "):
			out = append(out, line)
		case len(out) > 0 && line != "":
			out[len(out)-1] += "\n" + line
		}
	}
	return out
}

func ipOut(t testing.TB, n *testbed.Node, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", n.NS}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip -n %s %s: %v: %s", n.Name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// xfrmStat reads a node's /proc/net/xfrm_stat.
func xfrmStat(t testing.TB, n *testbed.Node) map[string]int {
	t.Helper()
	out, err := n.Run(context.Background(), "cat", "/proc/net/xfrm_stat")
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]int{}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			m[f[0]], _ = strconv.Atoi(f[1])
		}
	}
	return m
}

// statDiff returns the counters that moved between two snapshots.
func statDiff[V int | uint64](before, after map[string]V) map[string]V {
	d := map[string]V{}
	for k, v := range after {
		if v != before[k] {
			d[k] = v - before[k]
		}
	}
	return d
}

var reTcpdumpStats = regexp.MustCompile(`\d+ packets? dropped by kernel`)

// tcpdumpDrops returns what a stopped tcpdump said it lost.
func tcpdumpDrops(c *capture) string {
	return reTcpdumpStats.FindString(c.proc.Output())
}

var reCharonTrouble = regexp.MustCompile(`(?i)fail|error|giving up|unable|not found|invalid|no trusted|refus|timeout|not responding`)

// charonTrouble logs, when t failed, the lines of every charon log that
// say something went wrong (the end of the logs is dumped elsewhere; the
// trouble may lie at the start).
func charonTrouble(t testing.TB, p *testPKI) {
	if !t.Failed() {
		return
	}
	logs, _ := filepath.Glob(filepath.Join(p.dir, "state-*", "charon.log"))
	for _, l := range logs {
		b, _ := os.ReadFile(l)
		var lines []string
		for _, line := range strings.Split(string(b), "\n") {
			if reCharonTrouble.MatchString(line) && len(lines) < 40 {
				lines = append(lines, line)
			}
		}
		t.Logf("%s (%d bytes), trouble:\n%s", l, len(b), strings.Join(lines, "\n"))
	}
}
