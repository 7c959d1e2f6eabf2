package metrics

import (
	"context"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/firewall"
)

// fakeFirewall answers a fixed status.
type fakeFirewall struct{ st firewall.Status }

func (f fakeFirewall) Status(context.Context) firewall.Status { return f.st }
func (f fakeFirewall) Apply(context.Context, time.Duration) (control.FirewallApplyResponse, error) {
	return control.FirewallApplyResponse{}, nil
}
func (f fakeFirewall) Confirm() error                                  { return nil }
func (f fakeFirewall) Translate(context.Context, bool) (string, error) { return "", nil }

// firewallSource is a node that may run the firewall (nil fw: off).
type firewallSource struct {
	fakeSource
	fw control.Firewall
}

func (s firewallSource) Firewall() control.Firewall { return s.fw }

func TestFirewallMetrics(t *testing.T) {
	st := firewall.Status{Active: true, ConfirmBy: time.Now().Add(time.Minute), ApplyTook: 25 * time.Millisecond,
		Stats: firewall.Stats{Applies: 4, Failures: 1, Rollbacks: 2},
		Chains: []firewall.ChainStatus{{Name: "input", Rules: []firewall.RuleStatus{
			{Name: "in_gre_clear", Counter: firewall.Counter{Packets: 3, Bytes: 156}},
			{Name: "in_drop", Counter: firewall.Counter{Packets: 7, Bytes: 700}}}}}}
	m := New(firewallSource{fakeSource: fakeSource{eng: fakeEngine{}}, fw: fakeFirewall{st}})
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"dmvpn_firewall_rule_packets_total", []string{"chain", "input", "rule", "in_gre_clear"}, 3},
		{"dmvpn_firewall_rule_bytes_total", []string{"chain", "input", "rule", "in_drop"}, 700},
		{"dmvpn_firewall_applies_total", []string{"result", "applied"}, 4},
		{"dmvpn_firewall_applies_total", []string{"result", "refused"}, 1},
		{"dmvpn_firewall_rollbacks_total", nil, 2},
		{"dmvpn_firewall_pending", nil, 1},
		{"dmvpn_firewall_apply_seconds", nil, 0.025},
	} {
		got, err := value(fams, c.name, c.labels...)
		if err != nil || got != c.want {
			t.Errorf("%s%v = %v (%v), want %v", c.name, c.labels, got, err, c.want)
		}
	}
	// Off: no firewall family at all.
	m = New(firewallSource{fakeSource: fakeSource{eng: fakeEngine{}}})
	if fams, err = m.Registry().Gather(); err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if len(f.GetName()) > 15 && f.GetName()[:15] == "dmvpn_firewall_" {
			t.Errorf("%s exported without a firewall", f.GetName())
		}
	}
}
