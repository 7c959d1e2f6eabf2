package ctl

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/firewall"
)

func TestPrintFirewall(t *testing.T) {
	now := time.Date(2026, 1, 2, 12, 0, 0, 0, time.Local)
	r := control.FirewallResponse{Enabled: true, Policy: &firewall.Status{
		Active: true, AppliedAt: now.Add(-90 * time.Second), ApplyTook: 27300 * time.Microsecond, ConfirmBy: now.Add(25 * time.Second),
		Tunnel: "gre1", TunnelMTU: 1400, IPsec: firewall.IPsecUserspace, IPsecTUN: "ipsec0", Internet: []string{"eth0"},
		Stats: firewall.Stats{Applies: 3, Failures: 1, Rollbacks: 1, RollbackLate: 12 * time.Millisecond, LastError: "firewall: the kernel refused rule user_2"},
		Chains: []firewall.ChainStatus{{Name: "input", Type: "filter", Hook: "input", Policy: "drop", Rules: []firewall.RuleStatus{
			{Name: "in_established", Rule: "ct state established,related accept", Counter: firewall.Counter{Packets: 12, Bytes: 1008}},
			{Name: "in_gre_clear", Rule: "meta l4proto gre drop", Counter: firewall.Counter{Packets: 1, Bytes: 52}},
		}}},
	}, Dataplane: &control.FirewallDataplane{Backend: "ebpf", FastPath: true, IngressRefused: 4,
		Counters: map[string]uint64{"rx_passed": 2, "slow_ipsec": 0}, Drops: map[string]uint64{"ingress": 4, "bad_key": 1}}}
	var b bytes.Buffer
	printFirewall(&b, r, now)
	want := `Firewall: table inet dmvpn, 2 rules, applied 00:01:30 ago in 27.3ms
Tunnel gre1 (MTU 1400), IPsec userspace (charon's TUN ipsec0)
Zones: internet eth0; lan every other interface
Pending: rolls back at 12:00:25 (in 00:00:25) unless confirmed (firewall confirm)
Applies 3, refused 1, rollbacks 1 (the last 12ms after its deadline)
Last refusal: firewall: the kernel refused rule user_2

chain input (filter hook input, priority 0, policy drop)
     Packets          Bytes  Name            Rule
          12           1008  in_established  ct state established,related accept
           1             52  in_gre_clear    meta l4proto gre drop

Data plane ebpf: its fast path forwards outer GRE past netfilter and drops GRE in clear itself
  GRE refused (not under IPsec): 4
  fast path: rx_passed 2, slow_ipsec 0
  other drops: bad_key 1
`
	if got := b.String(); got != want {
		t.Errorf("show firewall:\n%s\nwant:\n%s", got, want)
	}
	b.Reset()
	r.Policy.Baseline, r.Policy.Internet = true, nil
	printFirewall(&b, r, now)
	if !strings.Contains(b.String(), "\nBaseline (no firewall section): GRE only under IPsec, BGP only on the tunnel, everything else accepted; uplinks none\n") {
		t.Errorf("baseline:\n%s", b.String())
	}
	b.Reset()
	printFirewall(&b, control.FirewallResponse{}, now)
	if !strings.HasPrefix(b.String(), "Firewall: off") {
		t.Errorf("off: %s", b.String())
	}
}
