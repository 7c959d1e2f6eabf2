package integration

import (
	"context"
	"encoding/hex"
	"net/netip"
	"os"
	"os/exec"
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
// redirects fire under its forward policy drop), a TCP SYN through the
// tunnel carries the MSS clamped to the tunnel MTU less 40, BGP from the
// internet is dropped, GRE injected in clear is dropped and counted (by
// the policy, or by the ebpf fast path before netfilter), an unconfirmed
// apply comes back by itself, and across ten restarts of the hub's charon
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
	x := newE2EWith(t, dataplane, func(n string) string { return ipsecYAML(n) + firewallYAML(n) },
		func(tb *testbed.Testbed) { all = startFullCapture(t, tb.Node("inet")) })
	waitFor(t, 30*time.Second, "all spokes registered over IPsec through the firewalls", x.allRegistered)
	hub, s1 := x.hub.firewall(), x.spokes[0].firewall()
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

	// The MSS of a SYN from LAN 1 to LAN 2, as it arrives on LAN 2.
	want := s1.Policy.TunnelMTU - 40
	if mss := synMSS(t, x.tb, "s1-h1", "s2-h1", "10.2.0.2"); mss != want {
		t.Errorf("the SYN arrived on LAN 2 with MSS %d, want %d (spoke 1's tunnel MTU %d less 40)", mss, want, s1.Policy.TunnelMTU)
	}

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

// synMSS opens a TCP connection from one host to another's address (port
// 9: nothing listens, the SYN is what counts) and returns the MSS option
// of the SYN as the destination host received it.
func synMSS(t *testing.T, tb *testbed.Testbed, from, to, addr string) int {
	t.Helper()
	return synMSSOn(t, tb, from, to, "eth0", addr)
}

// synMSSOn is synMSS with the SYN captured on node to's interface iface.
func synMSSOn(t *testing.T, tb *testbed.Testbed, from, to, iface, addr string) int {
	t.Helper()
	c := startTcpdump(t, tb.Node(to), "tcpdump-syn", "syn.pcap", iface, "tcp[tcpflags] & tcp-syn != 0 and dst port 9")
	tb.Node(from).Run(context.Background(), "timeout", "2", "bash", "-c", "exec 3<>/dev/tcp/"+addr+"/9")
	path := c.stop()
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
		if tcp == nil || !tcp.SYN {
			continue
		}
		for _, o := range tcp.Options {
			if o.OptionType == layers.TCPOptionKindMSS && len(o.OptionData) == 2 {
				return int(o.OptionData[0])<<8 | int(o.OptionData[1])
			}
		}
	}
	t.Fatalf("no SYN with an MSS option captured on %s", to)
	return 0
}

// firewallApplyRollback adds a rule to the hub's file, applies it with
// dmvpnctl firewall apply --confirm 2s and waits for it to come back.
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
	out, err := exec.Command(ctl, "--socket", d.socket, "firewall", "apply", "--confirm", "2s").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "firewall applied") {
		t.Fatalf("firewall apply: %v: %s", err, out)
	}
	var rc control.RunningConfigResponse
	d.get(control.PathRunningConfig, &rc)
	if d.firewall().Policy.ConfirmBy.IsZero() || !strings.Contains(rc.YAML, "2222") {
		t.Fatalf("after apply --confirm: not pending, or the running configuration lacks the rule:\n%s", rc.YAML)
	}
	// The policy is counted back before the daemon puts the configuration
	// that produced it back (the manager tells it after): wait for both.
	waitFor(t, 10*time.Second, "the unconfirmed apply to roll back, policy and running configuration", func() bool {
		r := d.firewall()
		var rc control.RunningConfigResponse
		d.get(control.PathRunningConfig, &rc)
		return r.Policy.Stats.Rollbacks > 0 && r.Policy.ConfirmBy.IsZero() && !strings.Contains(rc.YAML, "2222")
	})
	r := d.firewall()
	for _, c := range r.Policy.Chains {
		for _, ru := range c.Rules {
			if strings.Contains(ru.Rule, "2222") {
				t.Errorf("rule %s still in force after the rollback", ru.Name)
			}
		}
	}
	// How late is BenchmarkRollback's figure, not a test's on a shared
	// machine.
	t.Logf("rolled back %v after its deadline", r.Policy.Stats.RollbackLate)
}
