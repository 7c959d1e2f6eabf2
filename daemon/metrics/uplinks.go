package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/opendmvpn/dmvpn/daemon/control"
)

// The uplinks' families, read from the monitor's status at scrape time;
// without an uplinks section none is exported.
var (
	descUplinkUp = prometheus.NewDesc("dmvpn_uplink_up",
		"1 while the uplink is up (its probe hosts answer), 0 while it is down.", []string{"uplink", "interface"}, nil)
	descUplinkDefault = prometheus.NewDesc("dmvpn_uplink_default",
		"1 while the uplink carries the main table's default route (several: weighted multipath), 0 otherwise.", []string{"uplink"}, nil)
	descUplinkActive = prometheus.NewDesc("dmvpn_uplink_active",
		"1 for the uplink whose address is this node's NBMA address.", []string{"uplink"}, nil)
	descUplinkTransitions = prometheus.NewDesc("dmvpn_uplink_transitions_total",
		"Times the uplink changed state (up to down or back).", []string{"uplink"}, nil)
	descUplinkRounds = prometheus.NewDesc("dmvpn_uplink_probe_rounds_total",
		"Probe rounds decided for the uplink.", []string{"uplink"}, nil)
	descUplinkRTT = prometheus.NewDesc("dmvpn_uplink_rtt_seconds",
		"Smoothed round trip of a probe host through the uplink.", []string{"uplink", "host"}, nil)
	descUplinkLoss = prometheus.NewDesc("dmvpn_uplink_loss_ratio",
		"Share of the last probe rounds (up to 64) the host did not answer through the uplink (0–1).", []string{"uplink", "host"}, nil)
	descUplinkProbes = prometheus.NewDesc("dmvpn_uplink_probes_total",
		"Echo requests sent to a probe host through the uplink, and replies received.", []string{"uplink", "host", "direction"}, nil)
)

var uplinkDescs = []*prometheus.Desc{descUplinkUp, descUplinkDefault, descUplinkActive, descUplinkTransitions,
	descUplinkRounds, descUplinkRTT, descUplinkLoss, descUplinkProbes}

// collectUplinks emits the uplinks' families of src, if it has uplinks.
func collectUplinks(ch chan<- prometheus.Metric, src Source) {
	us, ok := src.(control.UplinksSource)
	if !ok {
		return
	}
	u := us.Uplinks()
	if u == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := u.Status(ctx)
	if err != nil {
		return
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	one := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	for _, s := range st {
		gauge(descUplinkUp, one(s.State == "up"), s.Name, s.Interface)
		gauge(descUplinkDefault, one(s.Default), s.Name)
		gauge(descUplinkActive, one(s.Active), s.Name)
		counter(descUplinkTransitions, s.Transitions, s.Name)
		counter(descUplinkRounds, s.Rounds, s.Name)
		for _, h := range s.Hosts {
			host := h.Address.String()
			gauge(descUplinkRTT, h.SRTT.Seconds(), s.Name, host)
			gauge(descUplinkLoss, h.Loss/100, s.Name, host)
			counter(descUplinkProbes, h.Sent, s.Name, host, "sent")
			counter(descUplinkProbes, h.Received, s.Name, host, "received")
		}
	}
}
