package metrics

import (
	"context"
	"errors"
	"io"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/nhrp"
	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

type fakeEngine struct{ fail bool }

func (f fakeEngine) Traffic(context.Context) (nhrp.Traffic, error) {
	if f.fail {
		return nhrp.Traffic{}, nhrp.ErrStopped
	}
	return nhrp.Traffic{
		Sent:           map[string]uint64{"Registration Request": 7},
		Received:       map[string]uint64{"Registration Reply": 6},
		ErrorsSent:     map[string]uint64{"authentication failure": 2},
		ErrorsReceived: map[string]uint64{},
		Dropped:        map[string]uint64{"malformed": 3},
		Suppressed:     map[string]uint64{"redirect": 1},
		Limited:        map[string]uint64{"rate-limited": 4},
	}, nil
}

func (fakeEngine) Gauges() nhrp.Gauges {
	return nhrp.Gauges{Peers: map[string]int{"up": 2, "failed": 1},
		Entries: map[string]int{"shortcut": 1, "nhs": 2}}
}

func (fakeEngine) NHS(context.Context) ([]nhrp.NHSStatus, error) {
	return []nhrp.NHSStatus{{State: nhrp.NHSUp}, {State: nhrp.NHSProbing}}, nil
}

type fakeSource struct {
	eng  Engine
	dp   bool
	fast bool // an ebpf data plane
}

func (s fakeSource) MetricsEngine() Engine { return s.eng }
func (s fakeSource) Counters() (gre.Counters, bool) {
	c := gre.Counters{TxPackets: 10, TxBytes: 1000, RxPackets: 8, RxBytes: 800, Misses: 4, MissesSuppressed: 1,
		Drops: map[string]uint64{"malformed": 5}}
	if s.fast {
		c.FastTxPackets, c.FastRxPackets = 9, 7
		c.FastPath = map[string]uint64{"slow_no_neighbor": 1, "slow_ipsec": 0}
	}
	return c, s.dp
}

// value returns the value of a metric with the given labels, or an error.
func value(fams []*dto.MetricFamily, name string, labels ...string) (float64, error) {
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.Metric {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.Label {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue(), nil
			case m.Gauge != nil:
				return m.Gauge.GetValue(), nil
			}
		}
		return 0, errors.New("no series with labels " + strings.Join(labels, ","))
	}
	return 0, errors.New("no metric " + name)
}

func TestMetrics(t *testing.T) {
	m := New(fakeSource{eng: fakeEngine{}, dp: true})
	m.Event(nhrp.Event{Kind: nhrp.EventRegistered, Proto: netip.MustParsePrefix("172.16.1.1/32")})
	m.Event(nhrp.Event{Kind: nhrp.EventRegistered})
	m.Event(nhrp.Event{Kind: nhrp.EventRegistrationRefused, Code: uint8(wire.CIEAdminProhibited)})
	m.Event(nhrp.Event{Kind: nhrp.EventShortcutUp})
	m.Event(nhrp.Event{Kind: nhrp.EventShortcutDown})
	m.Event(nhrp.Event{Kind: nhrp.EventShortcutDown})
	m.Event(nhrp.Event{Kind: nhrp.EventPacket})
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"dmvpn_nhrp_registrations_total", []string{"result", "accepted"}, 2},
		{"dmvpn_nhrp_registrations_total", []string{"result", "refused", "reason", "administratively prohibited"}, 1},
		{"dmvpn_nhrp_shortcuts_total", []string{"event", "installed"}, 1},
		{"dmvpn_nhrp_shortcuts_total", []string{"event", "expired"}, 2},
		{"dmvpn_nhrp_events_total", []string{"kind", "registered"}, 2},
		{"dmvpn_nhrp_packets_total", []string{"type", "Registration Request", "direction", "sent"}, 7},
		{"dmvpn_nhrp_packets_total", []string{"type", "Registration Reply", "direction", "received"}, 6},
		{"dmvpn_nhrp_error_indications_total", []string{"code", "authentication failure", "direction", "sent"}, 2},
		{"dmvpn_nhrp_dropped_total", []string{"reason", "malformed"}, 3},
		{"dmvpn_nhrp_suppressed_total", []string{"kind", "redirect"}, 1},
		{"dmvpn_nhrp_limited_total", []string{"limit", "rate-limited"}, 4},
		{"dmvpn_nhrp_peers", []string{"state", "up"}, 2},
		{"dmvpn_nhrp_peers", []string{"state", "failed"}, 1},
		{"dmvpn_nhrp_peers", []string{"state", "connecting"}, 0},
		{"dmvpn_nhrp_nhs", []string{"state", "probing"}, 1},
		{"dmvpn_nhrp_cache_entries", []string{"type", "nhs"}, 2},
		{"dmvpn_dataplane_packets_total", []string{"direction", "tx"}, 10},
		{"dmvpn_dataplane_bytes_total", []string{"direction", "rx"}, 800},
		{"dmvpn_dataplane_dropped_total", []string{"reason", "malformed"}, 5},
		{"dmvpn_dataplane_dropped_total", []string{"reason", "bad_key"}, 0},
		{"dmvpn_dataplane_neighbor_misses_total", []string{"result", "delivered"}, 4},
		{"dmvpn_dataplane_neighbor_misses_total", []string{"result", "suppressed"}, 1},
		{"dmvpn_up", nil, 1},
	} {
		got, err := value(fams, c.name, c.labels...)
		if err != nil || got != c.want {
			t.Errorf("%s%v = %v (%v), want %v", c.name, c.labels, got, err, c.want)
		}
	}
	if _, err := value(fams, "dmvpn_nhrp_events_total", "kind", "packet"); err == nil {
		t.Errorf("packet events are counted twice (dmvpn_nhrp_events_total{kind=packet})")
	}
}

func TestMetricsFastPath(t *testing.T) {
	fams, err := New(fakeSource{eng: fakeEngine{}, dp: true}).Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := value(fams, "dmvpn_dataplane_fast_path_total", "counter", "tx_packets"); err == nil {
		t.Error("fast-path counters on a data plane without one")
	}
	fams, err = New(fakeSource{eng: fakeEngine{}, dp: true, fast: true}).Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for counter, want := range map[string]float64{"tx_packets": 9, "rx_packets": 7, "slow_no_neighbor": 1, "slow_ipsec": 0} {
		if got, err := value(fams, "dmvpn_dataplane_fast_path_total", "counter", counter); err != nil || got != want {
			t.Errorf("dmvpn_dataplane_fast_path_total{counter=%q} = %v (%v), want %v", counter, got, err, want)
		}
	}
}

func TestMetricsWhileStarting(t *testing.T) {
	for _, src := range []fakeSource{{}, {eng: fakeEngine{fail: true}}} {
		m := New(src)
		fams, err := m.Registry().Gather()
		if err != nil {
			t.Fatal(err)
		}
		if v, err := value(fams, "dmvpn_up"); err != nil || v != 0 {
			t.Errorf("dmvpn_up = %v %v, want 0", v, err)
		}
		if _, err := value(fams, "dmvpn_dataplane_packets_total", "direction", "tx"); err == nil {
			t.Errorf("data-plane counters without a data plane")
		}
	}
}

func TestHandler(t *testing.T) {
	m := New(fakeSource{eng: fakeEngine{}, dp: true})
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	b, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		`dmvpn_nhrp_packets_total{direction="sent",type="Registration Request"} 7`,
		"# HELP dmvpn_dataplane_neighbor_misses_total",
		"go_goroutines",
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("exposition lacks %q", want)
		}
	}
}

// auditSource is a fakeSource whose limiter held back refused-packet
// lines.
type auditSource struct {
	fakeSource
	suppressed map[string]uint64
}

func (s auditSource) RefusalAuditSuppressed() map[string]uint64 { return s.suppressed }

// TestMetricsRefusalAudit: the lines the refusal limiter held back are
// exported by check; a source that does not count them has no family.
func TestMetricsRefusalAudit(t *testing.T) {
	m := New(auditSource{fakeSource: fakeSource{eng: fakeEngine{}}, suppressed: map[string]uint64{"purge-not-owner": 49931, "request-source": 2}})
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for check, want := range map[string]float64{"purge-not-owner": 49931, "request-source": 2} {
		if got, err := value(fams, "dmvpn_nhrp_refusal_audit_suppressed_total", "check", check); err != nil || got != want {
			t.Errorf("dmvpn_nhrp_refusal_audit_suppressed_total{check=%q} = %v (%v), want %v", check, got, err, want)
		}
	}
	fams, err = New(fakeSource{eng: fakeEngine{}}).Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := value(fams, "dmvpn_nhrp_refusal_audit_suppressed_total"); err == nil {
		t.Error("the family without a source that counts it")
	}
}
