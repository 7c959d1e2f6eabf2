// Package metrics exports a node's Prometheus metrics: registrations
// accepted and refused, peers and servers by state, NHRP packets by type
// and direction, Error Indications by code, dropped packets, shortcuts
// installed and expired, data-plane packets and bytes per direction,
// neighbour misses, with IPsec its SAs, failures, refusals, charon and
// certificate expiry (ipsec.go), and with the firewall every rule's
// counter, its applies and rollbacks (firewall.go), and with uplinks their
// states, round trips, losses and transitions (uplinks.go).
//
// Event counts come from the engine's events (Metrics is an nhrp.Observer);
// everything the engine and the data plane already count is read from
// their snapshots when Prometheus scrapes, so nothing is counted twice.
package metrics

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/nhrp"
	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// Engine is what the scrape reads from the NHRP engine. *nhrp.Engine
// implements it. The scrape does no work proportional to the cache or the
// peers: Gauges are counts kept as they change, read without the engine's
// goroutine; Traffic and NHS are of a fixed size.
type Engine interface {
	Traffic(ctx context.Context) (nhrp.Traffic, error)
	NHS(ctx context.Context) ([]nhrp.NHSStatus, error)
	Gauges() nhrp.Gauges
}

// Source gives the scrape the running engine and data plane; either may
// be missing while the node starts. A Source that also implements
// control.CryptoSource gives the IPsec statistics (none while its Crypto
// is nil: IPsec off).
type Source interface {
	MetricsEngine() Engine
	Counters() (gre.Counters, bool)
}

// Metrics holds the node's collectors.
type Metrics struct {
	reg *prometheus.Registry

	registrations *prometheus.CounterVec
	shortcuts     *prometheus.CounterVec
	events        *prometheus.CounterVec
}

// New returns the metrics of a node reading snapshots from src.
func New(src Source) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.registrations = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "dmvpn_nhrp_registrations_total",
		Help: "Client registrations decided by this hub: accepted (first registration or new NBMA address; refreshes are not counted) or refused, with the CIE code of the refusal as reason.",
	}, []string{"result", "reason"})
	m.shortcuts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "dmvpn_nhrp_shortcuts_total",
		Help: "Shortcut routes installed, and expired (removed: holding time over, purged, idle or cleared).",
	}, []string{"event"})
	m.events = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "dmvpn_nhrp_events_total",
		Help: "NHRP engine events by kind.",
	}, []string{"kind"})
	m.registrations.WithLabelValues("accepted", "")
	m.shortcuts.WithLabelValues("installed")
	m.shortcuts.WithLabelValues("expired")
	m.reg.MustRegister(m.registrations, m.shortcuts, m.events, &scrape{src: src},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Event counts an engine event; it implements nhrp.Observer and never
// blocks.
func (m *Metrics) Event(ev nhrp.Event) {
	switch ev.Kind {
	case nhrp.EventPacket:
		return // counted by the engine's Traffic
	case nhrp.EventRegistered:
		m.registrations.WithLabelValues("accepted", "").Inc()
	case nhrp.EventRegistrationRefused:
		m.registrations.WithLabelValues("refused", wire.CIECode(ev.Code).String()).Inc()
	case nhrp.EventShortcutUp:
		m.shortcuts.WithLabelValues("installed").Inc()
	case nhrp.EventShortcutDown:
		m.shortcuts.WithLabelValues("expired").Inc()
	}
	m.events.WithLabelValues(ev.Kind.String()).Inc()
}

// Handler serves the metrics in Prometheus' exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Timeout: 10 * time.Second})
}

// Registry returns the registry (tests gather from it).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

var (
	descPackets = prometheus.NewDesc("dmvpn_nhrp_packets_total",
		"NHRP packets by type and direction (sent, received).", []string{"type", "direction"}, nil)
	descErrInd = prometheus.NewDesc("dmvpn_nhrp_error_indications_total",
		"Error Indications by code and direction.", []string{"code", "direction"}, nil)
	descDropped = prometheus.NewDesc("dmvpn_nhrp_dropped_total",
		"Received NHRP packets dropped, by reason (malformed, auth, …).", []string{"reason"}, nil)
	descSuppressed = prometheus.NewDesc("dmvpn_nhrp_suppressed_total",
		"NHRP packets the rate limits held back, by kind.", []string{"kind"}, nil)
	descRefused = prometheus.NewDesc("dmvpn_nhrp_refused_total",
		"Received NHRP packets refused because their sender's identity does not prove what they claim, by check (request-source, requester-identity, reply-unmatched, reply-identity, purge-not-owner, traffic-indication-not-server, error-indication-unmatched).", []string{"check"}, nil)
	descLimited = prometheus.NewDesc("dmvpn_nhrp_limited_total",
		"What the NHRP engine's limits (the limits section) refused or evicted, by limit (cache-full, evicted, peers-full, pending-full, rate-limited, sources-full, too-many-cies, hooks-full, told-full).", []string{"limit"}, nil)
	descPeers = prometheus.NewDesc("dmvpn_nhrp_peers",
		"NBMA peers by state.", []string{"state"}, nil)
	descNHS = prometheus.NewDesc("dmvpn_nhrp_nhs",
		"Next hop servers by state.", []string{"state"}, nil)
	descCache = prometheus.NewDesc("dmvpn_nhrp_cache_entries",
		"NHRP cache entries by type.", []string{"type"}, nil)
	descDPPackets = prometheus.NewDesc("dmvpn_dataplane_packets_total",
		"Data packets through the tunnel by direction (tx: tunnel to NBMA, rx: NBMA to tunnel).", []string{"direction"}, nil)
	descDPBytes = prometheus.NewDesc("dmvpn_dataplane_bytes_total",
		"Data bytes (inner packets) through the tunnel by direction.", []string{"direction"}, nil)
	descDPDropped = prometheus.NewDesc("dmvpn_dataplane_dropped_total",
		"Packets the data plane dropped, by reason (malformed, bad_key, …); with IPsec in userspace mode, ingress is GRE refused because it arrived in clear (kernel mode: the kernel drops it, XfrmInPolBlock).", []string{"reason"}, nil)
	descMisses = prometheus.NewDesc("dmvpn_dataplane_neighbor_misses_total",
		"Packets that needed a tunnel next hop without a neighbour entry: delivered to NHRP, or suppressed by the rate limit.", []string{"result"}, nil)
	descNHRPFrames = prometheus.NewDesc("dmvpn_dataplane_nhrp_packets_total",
		"NHRP packets the data plane carried by direction.", []string{"direction"}, nil)
	descFastPath = prometheus.NewDesc("dmvpn_dataplane_fast_path_total",
		"The ebpf data plane's own counters: packets its BPF programs carried (tx_packets, rx_packets), super-packets carried whole (tx_gso, rx_gso), packets left to the slow path by reason (slow_no_neighbor, slow_too_big, slow_ipsec, slow_other), GRE passed to the stack (rx_passed). Absent on other data planes.", []string{"counter"}, nil)
	descUp = prometheus.NewDesc("dmvpn_up",
		"1 when the node's tunnel and NHRP engine run.", nil, nil)
)

var peerStates = []string{"idle", "connecting", "up", "failed"}

// scrape reads the snapshots at scrape time.
type scrape struct{ src Source }

// Describe implements prometheus.Collector.
func (s *scrape) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPackets, descErrInd, descDropped, descSuppressed, descRefused, descLimited, descPeers, descNHS,
		descCache, descDPPackets, descDPBytes, descDPDropped, descMisses, descNHRPFrames, descFastPath, descUp} {
		ch <- d
	}
	for _, d := range ipsecDescs {
		ch <- d
	}
	for _, d := range firewallDescs {
		ch <- d
	}
	for _, d := range uplinkDescs {
		ch <- d
	}
	for _, d := range bgpDescs {
		ch <- d
	}
	ch <- descRefusalAuditSuppressed
}

// Collect implements prometheus.Collector: it reads the snapshots.
func (s *scrape) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v int, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	e := s.src.MetricsEngine()
	up := 0
	if e != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if s.engine(ctx, e, counter, gauge) {
			up = 1
		}
	}
	gauge(descUp, up)
	if c, ok := s.src.Counters(); ok {
		counter(descDPPackets, c.TxPackets, "tx")
		counter(descDPPackets, c.RxPackets, "rx")
		counter(descDPBytes, c.TxBytes, "tx")
		counter(descDPBytes, c.RxBytes, "rx")
		counter(descNHRPFrames, c.NHRPTx, "tx")
		counter(descNHRPFrames, c.NHRPRx, "rx")
		counter(descMisses, c.Misses, "delivered")
		counter(descMisses, c.MissesSuppressed, "suppressed")
		for _, r := range gre.DropReasons() {
			counter(descDPDropped, c.Drops[r.String()], r.String())
		}
		if c.FastPath != nil {
			counter(descFastPath, c.FastTxPackets, "tx_packets")
			counter(descFastPath, c.FastRxPackets, "rx_packets")
			for name, n := range c.FastPath {
				counter(descFastPath, n, name)
			}
		}
	}
	if st, ok := ipsecStats(s.src); ok {
		collectIPsec(ch, st)
	}
	collectFirewall(ch, s.src)
	collectUplinks(ch, s.src)
	collectRefusalAudit(ch, s.src)
	if b := routingOf(s.src); b != nil {
		collectBGP(ch, b)
	}
}

// engine emits the engine's snapshots; false when the engine did not
// answer.
func (s *scrape) engine(ctx context.Context, e Engine, counter func(*prometheus.Desc, uint64, ...string), gauge func(*prometheus.Desc, int, ...string)) bool {
	t, err := e.Traffic(ctx)
	if err != nil {
		return false
	}
	for typ, n := range t.Sent {
		counter(descPackets, n, typ, "sent")
	}
	for typ, n := range t.Received {
		counter(descPackets, n, typ, "received")
	}
	for code, n := range t.ErrorsSent {
		counter(descErrInd, n, code, "sent")
	}
	for code, n := range t.ErrorsReceived {
		counter(descErrInd, n, code, "received")
	}
	for r, n := range t.Dropped {
		counter(descDropped, n, r)
	}
	for k, n := range t.Suppressed {
		counter(descSuppressed, n, k)
	}
	for k, n := range t.Refused {
		counter(descRefused, n, k)
	}
	for k, n := range t.Limited {
		counter(descLimited, n, k)
	}
	g := e.Gauges()
	for _, st := range peerStates {
		gauge(descPeers, g.Peers[st], st)
	}
	if ns, err := e.NHS(ctx); err == nil {
		by := map[string]int{}
		for _, n := range ns {
			by[n.State.String()]++
		}
		for _, st := range []nhrp.NHSState{nhrp.NHSDown, nhrp.NHSProbing, nhrp.NHSUp, nhrp.NHSStandby} {
			gauge(descNHS, by[st.String()], st.String())
		}
	}
	for t := nhrp.TypeIncomplete; t <= nhrp.TypeLocal; t++ {
		gauge(descCache, g.Entries[t.String()], t.String())
	}
	return true
}
