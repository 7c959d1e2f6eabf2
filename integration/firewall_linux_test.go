package integration

import (
	"context"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/integration/vm"
	"github.com/opendmvpn/dmvpn/lab/testbed"
)

// firewallYAML is the firewall section of an e2e node: wan0 faces the
// internet, a spoke's lan0 is its LAN (the hub's LAN zone is every other
// interface).
func firewallYAML(node string) string {
	s := "firewall:\n  zones:\n    internet: [wan0]\n"
	if node != "hub" {
		s += "    lan: [lan0]\n"
	}
	return s
}

// firewall returns a node's firewall answer.
func (d *daemonNode) firewall() control.FirewallResponse {
	var r control.FirewallResponse
	d.get(control.PathFirewall, &r)
	return r
}

// ruleCount returns a rule's packet counter (0 when absent).
func ruleCount(r control.FirewallResponse, name string) uint64 {
	if r.Policy == nil {
		return 0
	}
	for _, c := range r.Policy.Chains {
		for _, ru := range c.Rules {
			if ru.Name == name {
				return ru.Packets
			}
		}
	}
	return 0
}

// TestFirewall runs the IPsec scenario with every node's firewall on, per
// data plane (userspace and ebpf here; kernel ESP's secpath match in the
// VM test): GRE under IPsec passes and the shortcut comes up (the hub's
// redirects fire under its forward policy drop), a TCP handshake through
// the tunnel carries the MSS clamped by each spoke's rules both ways
// (spoke 2's tunnel MTU below spoke 1's: checkClamp), BGP from the
// internet is dropped, GRE injected in clear is dropped and counted (by
// the policy, or by the ebpf fast path before netfilter), an unconfirmed
// apply comes back by itself, its rollback begun within 100 ms of its
// deadline (median of three), and across ten restarts of the hub's charon
// not one GRE frame crosses the internet in clear.
func TestFirewall(t *testing.T) {
	for _, dp := range []string{"userspace", "ebpf"} {
		t.Run(dp, func(t *testing.T) {
			requireTestbed(t)
			requireCharon(t)
			if dp == "ebpf" {
				needBPF(t)
			}
			testFirewall(t, dp)
		})
	}
}

func testFirewall(t *testing.T, dataplane string) {
	p := newTestPKI(t)
	t.Cleanup(func() { p.dumpLogs() })
	ipsecYAML := p.ipsecExtra()
	var all *capture
	x := newE2EWith(t, dataplane, func(n string) string {
		mtu := ""
		if n == "s2" {
			mtu = fmt.Sprintf("tunnel:\n  mtu: %d\n", s2TunnelMTU)
		}
		return mtu + ipsecYAML(n) + firewallYAML(n)
	},
		func(tb *testbed.Testbed) { all = startFullCapture(t, tb.Node("inet")) })
	waitFor(t, 30*time.Second, "all spokes registered over IPsec through the firewalls", x.allRegistered)
	hub := x.hub.firewall()
	if !hub.Enabled || hub.Policy == nil || !hub.Policy.Active || hub.Policy.IPsecTUN == "" {
		t.Fatalf("hub's firewall: %s", jsonString(hub))
	}
	if ruleCount(hub, "in_gre_ipsec") == 0 {
		t.Errorf("the hub accepted no GRE from charon's TUN %s", hub.Policy.IPsecTUN)
	}

	// Spoke to spoke: first through the hub (whose forward policy is
	// drop), then its redirect and the shortcut.
	h1, h2 := x.hosts[0], x.hosts[1]
	if _, err := pingTTL(t, h1, h2.Addr); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the shortcuts between LAN 1 and LAN 2 (redirects under the hub's policy)", func() bool {
		_, ok1 := x.shortcut(0, 1)
		_, ok2 := x.shortcut(1, 0)
		return ok1 && ok2
	})
	if c := ruleCount(x.hub.firewall(), "fwd_tunnel_tunnel"); c == 0 {
		t.Error("the hub's fwd_tunnel_tunnel counted nothing: the relayed packet was not judged by the policy")
	}

	// The MSS clamp both ways, each rule on a value of its own.
	checkClamp(t, x)

	// BGP from the internet: silently dropped (no RST), and counted.
	bgp0 := ruleCount(x.hub.firewall(), "in_bgp_other")
	if out, err := x.tb.Node("inet").Run(context.Background(), "timeout", "2", "bash", "-c", "exec 3<>/dev/tcp/192.0.2.1/179"); err == nil {
		t.Errorf("a TCP connection to the hub's BGP port from the internet succeeded: %s", out)
	}
	waitFor(t, 5*time.Second, "the hub to count BGP from the internet dropped", func() bool {
		return ruleCount(x.hub.firewall(), "in_bgp_other") > bgp0
	})

	// GRE in clear from spoke 1's address: the policy drops it, or on
	// ebpf the fast path before netfilter sees it; both count.
	marker := []byte("dmvpn-firewall-probe")
	inner := icmpPacket(t, "10.1.0.99", "10.0.0.1", marker)
	inj := vm.GoBuild(t, "./integration/cmd/greinject")
	r0 := x.hub.firewall()
	if out, err := x.tb.Node("inet").Run(context.Background(), inj, "-src", "198.51.100.1", "-dst", "192.0.2.1",
		"-key", "42", "-payload", hex.EncodeToString(inner), "-n", "20"); err != nil {
		t.Fatalf("greinject: %v: %s", err, out)
	}
	waitFor(t, 5*time.Second, "the hub to drop and count the GRE injected in clear", func() bool {
		r := x.hub.firewall()
		if r.Dataplane != nil && r.Dataplane.FastPath {
			return r.Dataplane.IngressRefused >= r0.Dataplane.IngressRefused+20
		}
		return ruleCount(r, "in_gre_clear") >= ruleCount(r0, "in_gre_clear")+20
	})

	// An unconfirmed apply from the shell: a new rule in force, then the
	// previous policy and running configuration back by themselves.
	firewallApplyRollback(t, x.hub)

	// Ten restarts of the hub's charon: the firewall follows its TUN, the
	// spokes come back each time, and no GRE leaves in clear.
	for i := 0; i < 10; i++ {
		x.killHubCharon(t, p)
	}
	if _, err := pingTTL(t, h1, netip.MustParseAddr("10.0.0.1")); err != nil {
		t.Errorf("spoke 1's LAN cannot reach the hub after the restarts: %v", err)
	}
	wc := countWire(t, all.stop(), marker, nbmaOf(x, 0), nbmaOf(x, 1))
	t.Logf("internet router saw %d IKE/ESP packets, %d GRE (%d of them injected), %d other", wc.ike, wc.gre, wc.injected, wc.other)
	if wc.injected == 0 {
		t.Error("the capture saw none of the injected GRE: it could not have seen GRE in clear either")
	}
	if wc.gre != wc.injected {
		t.Errorf("%d GRE packets on the wire, only %d of them injected: GRE crossed the internet in clear", wc.gre, wc.injected)
	}
}

// s2TunnelMTU is spoke 2's tunnel MTU in TestFirewall: below spoke 1's
// (1372 under userspace ESP), so the clamps on the way from LAN 1 to LAN
// 2 and back each leave a value of their own.
const s2TunnelMTU = 1300

// checkClamp connects LAN 1's host to a listener on LAN 2's and checks
// each clamp rule on the path by the MSS it leaves and by its counter.
// The hosts offer 1460 (1500 on their LAN). The SYN leaves spoke 1 into
// its tunnel clamped to its route's MTU less 40 (fwd_mss_out: spoke 1's
// value, seen on spoke 2's gre1), then spoke 2 clamps it out of its
// smaller tunnel (fwd_mss_in: spoke 2's value on LAN 2); the SYN-ACK
// leaves spoke 2 clamped to its own MTU (fwd_mss_out, seen as it reaches
// LAN 1: spoke 1's fwd_mss_in would leave spoke 1's larger value; not on
// spoke 2's gre1, where the ebpf fast path sends it past the capture).
// Every rule is thus judged by a value no other rule on
// the path sets; spoke 1's fwd_mss_in, whose value would be above what
// arrives, is left to the firewall package's tests.
func checkClamp(t *testing.T, x *e2e) {
	t.Helper()
	s1, s2 := x.spokes[0], x.spokes[1]
	r1, r2 := s1.firewall(), s2.firewall()
	mtu1, mtu2 := r1.Policy.TunnelMTU, r2.Policy.TunnelMTU
	if mtu2 != s2TunnelMTU || mtu1 <= mtu2 {
		t.Fatalf("tunnel MTUs: spoke 1 %d, spoke 2 %d; want spoke 2's %d, below spoke 1's", mtu1, mtu2, s2TunnelMTU)
	}
	const port = "5209"
	srv, err := x.tb.Node("s2-h1").Start(testbed.ProcSpec{Name: "iperf3-mss", Args: []string{"iperf3", "-s", "-1", "-p", port, "--forceflush"}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, _, err := srv.WaitFor(ctx, regexp.MustCompile(`Server listening on `+port), 0); err != nil {
		t.Fatalf("iperf3 -s on s2-h1: %v\n%s", err, srv.Output())
	}
	filter := "tcp port " + port + " and tcp[tcpflags] & tcp-syn != 0"
	onLAN2 := startTcpdump(t, x.tb.Node("s2-h1"), "tcpdump-mss-lan2", "lan2.pcap", "eth0", filter)
	onGRE2 := startTcpdump(t, x.tb.Node("s2"), "tcpdump-mss-gre2", "gre2.pcap", "gre1", filter)
	onLAN1 := startTcpdump(t, x.tb.Node("s1-h1"), "tcpdump-mss-lan1", "lan1.pcap", "eth0", filter)
	if out, err := x.tb.Node("s1-h1").Run(context.Background(), "timeout", "5", "bash", "-c", "exec 3<>/dev/tcp/10.2.0.2/"+port); err != nil {
		t.Fatalf("connecting from LAN 1 to 10.2.0.2:%s: %v: %s", port, err, out)
	}
	lan2, gre2, lan1 := onLAN2.stop(), onGRE2.stop(), onLAN1.stop()
	for _, c := range []struct {
		what, path string
		synack     bool
		want       int
	}{
		{"the SYN into spoke 2's tunnel (spoke 1's fwd_mss_out: its MTU less 40)", gre2, false, mtu1 - 40},
		{"the SYN on LAN 2 (spoke 2's fwd_mss_in: its MTU less 40)", lan2, false, mtu2 - 40},
		{"the SYN-ACK on LAN 1 (spoke 2's fwd_mss_out; spoke 1's fwd_mss_in would leave " + strconv.Itoa(mtu1-40) + ")", lan1, true, mtu2 - 40},
	} {
		if got := capturedMSS(t, c.path, c.synack); got != c.want {
			t.Errorf("%s: MSS %d, want %d", c.what, got, c.want)
		} else {
			t.Logf("%s: MSS %d", c.what, got)
		}
	}
	waitFor(t, 5*time.Second, "spoke 1's fwd_mss_out, spoke 2's fwd_mss_in and fwd_mss_out to count the handshake", func() bool {
		n1, n2 := s1.firewall(), s2.firewall()
		return ruleCount(n1, "fwd_mss_out") > ruleCount(r1, "fwd_mss_out") &&
			ruleCount(n2, "fwd_mss_in") > ruleCount(r2, "fwd_mss_in") &&
			ruleCount(n2, "fwd_mss_out") > ruleCount(r2, "fwd_mss_out")
	})
}

// synMSSOn opens a TCP connection from one host to another's address
// (port 9: nothing listens, the SYN is what counts) and returns the MSS
// option of the SYN as node to captured it on its interface iface.
func synMSSOn(t *testing.T, tb *testbed.Testbed, from, to, iface, addr string) int {
	t.Helper()
	c := startTcpdump(t, tb.Node(to), "tcpdump-syn", "syn.pcap", iface, "tcp[tcpflags] & tcp-syn != 0 and dst port 9")
	tb.Node(from).Run(context.Background(), "timeout", "2", "bash", "-c", "exec 3<>/dev/tcp/"+addr+"/9")
	return capturedMSS(t, c.stop(), false)
}

// capturedMSS returns the MSS option of the first SYN (or with synack
// the first SYN-ACK) in the capture at path.
func capturedMSS(t *testing.T, path string, synack bool) int {
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
	for p := range gopacket.NewPacketSource(r, r.LinkType()).Packets() {
		tcp, _ := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if tcp == nil || !tcp.SYN || tcp.ACK != synack {
			continue
		}
		for _, o := range tcp.Options {
			if o.OptionType == layers.TCPOptionKindMSS && len(o.OptionData) == 2 {
				return int(o.OptionData[0])<<8 | int(o.OptionData[1])
			}
		}
	}
	kind := "SYN"
	if synack {
		kind = "SYN-ACK"
	}
	t.Fatalf("no %s with an MSS option in %s", kind, path)
	return 0
}

// firewallApplyRollback adds a rule to the node's file and applies it
// with dmvpnctl firewall apply --confirm 1s, rollbackRounds times, each
// time waiting for the policy and the running configuration to come back
// by themselves; the median of when the daemon began each rollback
// (RollbackLate less the kernel's replace, RollbackTook) must be within
// the 100 ms of its deadline. The whole bound, the kernel's commit
// included, is firewall's TestKernelRollback's, in a namespace of its own:
// here every other integration test runs beside this one, and one commit
// may wait hundreds of ms for an RCU grace period while they create and
// delete namespaces.
func firewallApplyRollback(t *testing.T, d *daemonNode) {
	t.Helper()
	ctl := vm.GoBuild(t, "./cmd/dmvpnctl")
	orig, err := os.ReadFile(d.config)
	if err != nil {
		t.Fatal(err)
	}
	rule := "  rules:\n    - {from: internet, to: local, protocol: tcp, ports: 2222, action: accept}\n"
	if err := os.WriteFile(d.config, append(append([]byte{}, orig...), rule...), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.WriteFile(d.config, orig, 0o600) })
	rollbacks0 := d.firewall().Policy.Stats.Rollbacks
	var lates []time.Duration
	for i := 1; i <= rollbackRounds; i++ {
		out, err := exec.Command(ctl, "--socket", d.socket, "firewall", "apply", "--confirm", "1s").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "firewall applied") {
			t.Fatalf("firewall apply (round %d): %v: %s", i, err, out)
		}
		var rc control.RunningConfigResponse
		d.get(control.PathRunningConfig, &rc)
		if d.firewall().Policy.ConfirmBy.IsZero() || !strings.Contains(rc.YAML, "2222") {
			t.Fatalf("after apply --confirm: not pending, or the running configuration lacks the rule:\n%s", rc.YAML)
		}
		// The policy is counted back before the daemon puts the
		// configuration that produced it back (the manager tells it
		// after): wait for both.
		waitFor(t, 10*time.Second, "the unconfirmed apply to roll back, policy and running configuration", func() bool {
			r := d.firewall()
			var rc control.RunningConfigResponse
			d.get(control.PathRunningConfig, &rc)
			return r.Policy.Stats.Rollbacks == rollbacks0+uint64(i) && r.Policy.ConfirmBy.IsZero() && !strings.Contains(rc.YAML, "2222")
		})
		st := d.firewall().Policy.Stats
		t.Logf("rollback %d: %v after its deadline (the kernel's replace %v)", i, st.RollbackLate, st.RollbackTook)
		lates = append(lates, st.RollbackLate-st.RollbackTook)
	}
	r := d.firewall()
	for _, c := range r.Policy.Chains {
		for _, ru := range c.Rules {
			if strings.Contains(ru.Rule, "2222") {
				t.Errorf("rule %s still in force after the rollback", ru.Name)
			}
		}
	}
	slices.Sort(lates)
	if median := lates[len(lates)/2]; median > 100*time.Millisecond {
		t.Errorf("median rollback began %v after its deadline (of %v), over the bound of timeout + 100 ms", median, lates)
	}
}

// rollbackRounds is how many unconfirmed applies firewallApplyRollback
// judges the median of.
const rollbackRounds = 3
