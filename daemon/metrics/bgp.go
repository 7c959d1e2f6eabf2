package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/opendmvpn/dmvpn/bgp"
	"github.com/opendmvpn/dmvpn/daemon/control"
)

// The BGP families, read from the speaker at scrape time. A Source that
// also implements control.RoutingSource (dmvpnd's App) has them while BGP
// runs; without BGP none is exported.
var (
	descBGPSessions = prometheus.NewDesc("dmvpn_bgp_sessions",
		"BGP sessions by state (idle, connect, active, opensent, openconfirm, established).", []string{"state"}, nil)
	descBGPPrefixes = prometheus.NewDesc("dmvpn_bgp_prefixes",
		"Prefixes a neighbour sends now: received, accepted by its filter, refused.", []string{"neighbor", "kind"}, nil)
	descBGPRefused = prometheus.NewDesc("dmvpn_bgp_prefixes_refused_total",
		"Prefixes refused from a neighbour since it became one (each audited with its certificate).", []string{"neighbor"}, nil)
	descBGPUpdates = prometheus.NewDesc("dmvpn_bgp_updates_total",
		"BGP UPDATE messages by neighbour and direction (in, out), over the neighbour's life.", []string{"neighbor", "direction"}, nil)
	descBGPFlaps = prometheus.NewDesc("dmvpn_bgp_flaps_total",
		"Times a neighbour's session left established.", []string{"neighbor"}, nil)
	descBGPNeighborsRefused = prometheus.NewDesc("dmvpn_bgp_neighbors_refused_total",
		"Registered spokes not made neighbours (certificate fields: no or several OU=AS=, fields that do not parse).", nil, nil)
	descBGPKernelRoutes = prometheus.NewDesc("dmvpn_bgp_kernel_routes",
		"Routes BGP has in the kernel.", nil, nil)
	descBGPKernelWrites = prometheus.NewDesc("dmvpn_bgp_kernel_writes_total",
		"Route sets handed to the kernel, by result (ok, error).", []string{"result"}, nil)
)

var bgpDescs = []*prometheus.Desc{descBGPSessions, descBGPPrefixes, descBGPRefused, descBGPUpdates, descBGPFlaps,
	descBGPNeighborsRefused, descBGPKernelRoutes, descBGPKernelWrites}

var bgpStates = []string{bgp.StateIdle, bgp.StateConnect, bgp.StateActive, bgp.StateOpenSent, bgp.StateOpenConfirm, bgp.StateEstablished}

// routingOf returns the BGP speaker of src, or nil.
func routingOf(src Source) control.Routing {
	rs, ok := src.(control.RoutingSource)
	if !ok {
		return nil
	}
	return rs.BGP()
}

// collectBGP emits the BGP families.
func collectBGP(ch chan<- prometheus.Metric, b control.Routing) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v int, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	st := b.Stats()
	counter(descBGPNeighborsRefused, st.NeighborsRefused)
	gauge(descBGPKernelRoutes, st.FIBRoutes)
	counter(descBGPKernelWrites, st.FIBUpdates, "ok")
	counter(descBGPKernelWrites, st.FIBErrors, "error")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sum, err := b.Summary(ctx)
	if err != nil {
		return
	}
	byState := map[string]int{}
	for _, n := range sum.Neighbors {
		byState[n.State]++
		a := n.Address.String()
		gauge(descBGPPrefixes, n.Received, a, "received")
		gauge(descBGPPrefixes, n.Accepted, a, "accepted")
		gauge(descBGPPrefixes, n.Refused, a, "refused")
		counter(descBGPRefused, n.RefusedTotal, a)
		counter(descBGPUpdates, n.UpdatesIn, a, "in")
		counter(descBGPUpdates, n.UpdatesOut, a, "out")
		counter(descBGPFlaps, n.Flaps, a)
	}
	for _, s := range bgpStates {
		gauge(descBGPSessions, byState[s], s)
	}
}
