package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/opendmvpn/dmvpn/daemon/control"
)

// The firewall families, read from the policy's status at scrape time. A
// Source that also implements control.FirewallSource (dmvpnd's App) has
// them while the node runs its firewall; without one none is exported.
// The rule counters start again from zero at every apply (the table is
// replaced whole).
var (
	descFWRulePackets = prometheus.NewDesc("dmvpn_firewall_rule_packets_total",
		"Packets each rule of the firewall's table counted since the last apply, by chain and rule name.", []string{"chain", "rule"}, nil)
	descFWRuleBytes = prometheus.NewDesc("dmvpn_firewall_rule_bytes_total",
		"Bytes each rule of the firewall's table counted since the last apply, by chain and rule name.", []string{"chain", "rule"}, nil)
	descFWApplies = prometheus.NewDesc("dmvpn_firewall_applies_total",
		"Firewall applies by result: applied (rollbacks included) or refused (invalid, or refused by the kernel: nothing changed).", []string{"result"}, nil)
	descFWRollbacks = prometheus.NewDesc("dmvpn_firewall_rollbacks_total",
		"Applies not confirmed in time, rolled back to the previous policy.", nil, nil)
	descFWPending = prometheus.NewDesc("dmvpn_firewall_pending",
		"1 while an apply waits for confirmation.", nil, nil)
	descFWApplySeconds = prometheus.NewDesc("dmvpn_firewall_apply_seconds",
		"How long the apply of the policy in force took (build and the kernel's atomic replace).", nil, nil)
)

var firewallDescs = []*prometheus.Desc{descFWRulePackets, descFWRuleBytes, descFWApplies, descFWRollbacks, descFWPending, descFWApplySeconds}

// collectFirewall emits the firewall families of src, if it runs one.
func collectFirewall(ch chan<- prometheus.Metric, src Source) {
	fs, ok := src.(control.FirewallSource)
	if !ok {
		return
	}
	fw := fs.Firewall()
	if fw == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st := fw.Status(ctx)
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	for _, c := range st.Chains {
		for _, r := range c.Rules {
			counter(descFWRulePackets, r.Packets, c.Name, r.Name)
			counter(descFWRuleBytes, r.Bytes, c.Name, r.Name)
		}
	}
	counter(descFWApplies, st.Stats.Applies, "applied")
	counter(descFWApplies, st.Stats.Failures, "refused")
	counter(descFWRollbacks, st.Stats.Rollbacks)
	pending := 0.0
	if !st.ConfirmBy.IsZero() {
		pending = 1
	}
	gauge(descFWPending, pending)
	gauge(descFWApplySeconds, st.ApplyTook.Seconds())
}
