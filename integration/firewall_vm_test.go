package integration

import (
	"context"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/integration/vm"
	"github.com/opendmvpn/dmvpn/lab/testbed"
)

// TestKernelFirewallInVM runs the firewall with the production data plane
// (ip_gre) and kernel ESP, in a VM with Debian's kernel when this one
// lacks ip_gre: a hub and a spoke. GRE under IPsec carries a secpath and
// passes (`meta ipsec exists`: the registration and the pings); the
// hub's own GRE leaves on routes with an IPsec transform (`rt ipsec
// missing` counts nothing while it works); GRE injected in clear from the
// spoke's address is dropped and counted by the policy before the
// kernel's xfrm policy check sees it; BGP from the internet is dropped
// and counted; a TCP SYN from the spoke's LAN reaches the hub through the
// tunnel with its MSS clamped to the spoke's tunnel MTU less 40 (`rt mtu`
// on ip_gre); the tables list in that kernel as translated; across ten
// SIGKILLs of the hub's charon (each time the spoke's SA and registration
// come back) the internet router sees no GRE in clear but the GRE
// injected at the start and the end (the proof its capture would), and
// forwards none.
func TestKernelFirewallInVM(t *testing.T) {
	t.Parallel() // boots a VM: let it overlap the other VM tests
	if needVM(t) {
		requireCharon(t)
		cfg := vmConfig()
		cfg.Timeout = 8 * time.Minute // ten restarts of charon under TCG
		cfg.Env = append(os.Environ(), envGREInject+"="+vm.GoBuild(t, "./integration/cmd/greinject"))
		startGuest(t, cfg).wait()
		return
	}
	needKernelGRE(t)
	requireCharon(t)
	modprobe(t, "esp4", "xfrm_user")
	inj := os.Getenv(envGREInject)
	if inj == "" {
		inj = vm.GoBuild(t, "./integration/cmd/greinject")
	}
	p := newTestPKI(t)
	p.mode = "kernel"
	t.Cleanup(func() { p.dumpLogs() })
	bin := buildDmvpnd(t)
	s1NBMA := netip.MustParseAddr("198.51.100.1")
	spec := testbed.Spec{Sites: []testbed.Site{
		{Name: "hub", Kind: testbed.Hub, NBMA: netip.MustParsePrefix("192.0.2.1/24")},
		{Name: "s1", Kind: testbed.Spoke, NBMA: netip.PrefixFrom(s1NBMA, 26), LAN: netip.MustParsePrefix("10.1.0.1/24"), Hosts: 1},
	}}
	tb, err := testbed.New(context.Background(), spec, testbed.WithLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tb.Close() })
	fwd := countForwarded(t, tb.Node("inet"), map[string]string{"clear_gre": "meta l4proto gre"})
	wire := startFullCapture(t, tb.Node("inet"))
	// GRE in clear injected from the spoke's address at the start and at
	// the end, each with its own marker: the capture must see both.
	first, last := []byte("dmvpn-firewall-vm-probe"), []byte("dmvpn-firewall-vm-last")
	inject := func(marker []byte) {
		t.Helper()
		inner := icmpPacket(t, "10.1.0.99", "10.0.0.1", marker)
		if out, err := tb.Node("inet").Run(context.Background(), inj, "-src", s1NBMA.String(), "-dst", "192.0.2.1",
			"-key", "42", "-payload", hex.EncodeToString(inner), "-n", "20"); err != nil {
			t.Fatalf("greinject: %v: %s", err, out)
		}
	}

	hub := startDaemon(t, bin, tb.Node("hub"), hubYAML("kernel")+p.node("hub", "C=FI, O=Example, OU=GRE=10.0.0.1, OU=AS=65000, CN=hub", "")+firewallYAML("hub"))
	if err := tb.Node("hub").IP(fmt.Sprintf("route add %s via %s dev gre1 onlink", e2eLAN[0], e2eTunnel[0])); err != nil {
		t.Fatal(err)
	}
	s1 := startDaemon(t, bin, tb.Node("s1"), spokeYAML("s1", "kernel", e2eTunnel[0].String(), "10.1.0.0/24")+
		p.node("s1", "C=FI, O=Example, OU=GRE=10.0.0.11, OU=AS=65011, OU=NET=10.1.0.0/24, CN=s1", "")+firewallYAML("s1"))
	if err := tb.Node("s1").IP("route add 10.0.0.0/8 via 10.0.0.1 dev gre1 onlink"); err != nil {
		t.Fatal(err)
	}
	x := &e2e{t: t, tb: tb, hub: hub, spokes: []*daemonNode{s1}}
	waitFor(t, 60*time.Second, "the spoke registered over kernel IPsec through both firewalls", x.allRegistered)

	r := hub.firewall()
	if r.Policy == nil || r.Policy.IPsec != "kernel" {
		t.Fatalf("the hub's firewall: %s", jsonString(r))
	}
	if c := ruleCount(r, "in_gre_ipsec"); c == 0 {
		t.Error("the hub accepted no GRE with a secpath: the registration came some other way")
	}
	if _, err := pingTTL(t, tb.Node("s1-h1"), netip.MustParseAddr("10.0.0.1")); err != nil {
		t.Errorf("spoke 1's LAN cannot reach the hub: %v", err)
	}
	// The hub's own GRE (registration replies, pings) went out on routes
	// with an IPsec transform: the output rule dropped none of it. (GRE
	// without an SA never reaches it here: host's catch-all xfrm block
	// policy refuses it at the route lookup, before the output hook. That
	// the rule matches GRE without an IPsec route is shown without that
	// policy by the firewall package's TestKernelModeGREOutOnlyUnderIPsec;
	// that it is in this kernel, by the listing compared below.)
	if c := ruleCount(hub.firewall(), "out_gre_clear"); c != 0 {
		t.Errorf("the hub's out_gre_clear dropped %d of its own GRE", c)
	}

	// GRE in clear from the spoke's address: the policy drops and counts
	// it before the kernel's xfrm policy check sees it.
	xs0 := xfrmStat(t, tb.Node("hub"))
	c0 := ruleCount(hub.firewall(), "in_gre_clear")
	inject(first)
	waitFor(t, 10*time.Second, "the hub's policy to drop the GRE injected in clear", func() bool {
		return ruleCount(hub.firewall(), "in_gre_clear") >= c0+20
	})
	if moved := statDiff(xs0, xfrmStat(t, tb.Node("hub"))); moved["XfrmInTmplMismatch"]+moved["XfrmInPolBlock"] != 0 {
		t.Errorf("the injected GRE reached the xfrm policy check (%v): the policy let it through", moved)
	}

	// BGP from the internet: silently dropped (no RST), and counted.
	bgp0 := ruleCount(hub.firewall(), "in_bgp_other")
	if out, err := tb.Node("inet").Run(context.Background(), "timeout", "2", "bash", "-c", "exec 3<>/dev/tcp/192.0.2.1/179"); err == nil {
		t.Errorf("a TCP connection to the hub's BGP port from the internet succeeded: %s", out)
	}
	waitFor(t, 10*time.Second, "the hub to count BGP from the internet dropped", func() bool {
		return ruleCount(hub.firewall(), "in_bgp_other") > bgp0
	})

	// A SYN from the spoke's LAN to the hub's tunnel address, as it
	// arrives out of the hub's ip_gre device: the spoke clamped its MSS to
	// the route's MTU into the tunnel.
	sp := s1.firewall().Policy
	if mss := synMSSOn(t, tb, "s1-h1", "hub", "gre1", "10.0.0.1"); mss != sp.TunnelMTU-40 {
		t.Errorf("the SYN reached the hub with MSS %d, want %d (the spoke's tunnel MTU %d less 40)", mss, sp.TunnelMTU-40, sp.TunnelMTU)
	}

	// The kernel lists the hub's table as dmvpnd translated it.
	var tr control.FirewallTranslateResponse
	hub.get(control.PathFirewallTranslate+"?running=true", &tr)
	listed := ipNft(t, tb.Node("hub"), "list", "table", "inet", "dmvpn")
	if a, b := normalizeNft(tr.Text), normalizeNft(listed); a != b {
		t.Errorf("this kernel lists the hub's table otherwise than translated:\ntranslated:\n%s\nlisted:\n%s", a, b)
	}

	// Ten restarts of the hub's charon: kernel SAs and policies of the
	// dead charon, its successor's, and the gap between them; the
	// firewall's output rule and host's catch-all policies keep GRE in.
	var took []time.Duration
	for i := 0; i < 10; i++ {
		took = append(took, x.killHubCharon(t, p))
	}
	slices.Sort(took)
	t.Logf("the spoke's SA and registration back %v after each SIGKILL of the hub's charon (median %v)", took, took[len(took)/2])
	if _, err := pingTTL(t, tb.Node("s1-h1"), netip.MustParseAddr("10.0.0.1")); err != nil {
		t.Errorf("spoke 1's LAN cannot reach the hub after the restarts: %v", err)
	}
	inject(last) // the capture still sees GRE at the end
	waitFor(t, slowVM(10*time.Second), "the capture to see the GRE injected at the end", func() bool {
		return countWire(t, wire.path, last, s1NBMA, netip.MustParseAddr("192.0.2.1")).injected > 0
	})
	path := wire.stop()
	wc := countWire(t, path, first, s1NBMA, netip.MustParseAddr("192.0.2.1"))
	atEnd := countWire(t, path, last, s1NBMA, netip.MustParseAddr("192.0.2.1")).injected
	t.Logf("internet router saw %d ESP, %d IKE, %d GRE (%d and %d of them injected at the start and the end), %d other",
		wc.esp, wc.ike, wc.gre, wc.injected, atEnd, wc.other)
	if wc.injected == 0 || atEnd == 0 {
		t.Errorf("the capture saw %d of the GRE packets injected at the start, %d of those at the end: it could not have seen GRE in clear all along", wc.injected, atEnd)
	}
	if wc.gre != wc.injected+atEnd {
		t.Errorf("%d GRE packets on the wire, only %d of them injected: GRE crossed the internet in clear", wc.gre, wc.injected+atEnd)
	}
	if wc.esp == 0 {
		t.Error("no ESP on the wire: the kernel's SAs carried nothing")
	}
	// It sent the injected GRE itself: it forwarded none.
	if c := fwd.get()["clear_gre"]; c != 0 {
		t.Errorf("the internet router forwarded %d GRE packets: GRE in clear", c)
	}
}

// ipNft runs nft in a node.
func ipNft(t testing.TB, n *testbed.Node, args ...string) string {
	t.Helper()
	out, err := n.Run(context.Background(), append([]string{"nft"}, args...)...)
	if err != nil {
		t.Fatalf("nft %v: %v: %s", args, err, out)
	}
	return string(out)
}

var (
	nftCounterRE = regexp.MustCompile(`packets \d+ bytes \d+`)
	nftSetRE     = regexp.MustCompile(`\{ ([^{}]*) \}`)
)

// normalizeNft zeroes counters and sorts set elements (a hashed set lists
// in its own order).
func normalizeNft(s string) string {
	s = nftCounterRE.ReplaceAllString(s, "packets 0 bytes 0")
	return nftSetRE.ReplaceAllStringFunc(s, func(m string) string {
		items := strings.Split(nftSetRE.FindStringSubmatch(m)[1], ",")
		for i := range items {
			items[i] = strings.TrimSpace(items[i])
		}
		slices.Sort(items)
		return "{ " + strings.Join(items, ", ") + " }"
	})
}
