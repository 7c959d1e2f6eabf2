package metrics

import (
	"context"
	"io"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/ipsec"
)

// fakeCrypto is a node's IPsec answering fixed statistics.
type fakeCrypto struct{ st ipsec.Stats }

func (f fakeCrypto) SAs(context.Context) ([]ipsec.SA, error)        { return nil, nil }
func (f fakeCrypto) Stats() ipsec.Stats                             { return f.st }
func (f fakeCrypto) Clear(context.Context, netip.Addr) (int, error) { return 0, nil }
func (f fakeCrypto) Log(context.Context, netip.Addr, func(ipsec.LogLine) error) error {
	return nil
}

// cryptoSource is a node that may run IPsec (a nil c: IPsec off), as
// dmvpnd's App is.
type cryptoSource struct {
	fakeSource
	c control.Crypto
}

func (s cryptoSource) Crypto() control.Crypto { return s.c }

func (s cryptoSource) Counters() (gre.Counters, bool) {
	return gre.Counters{Drops: map[string]uint64{"ingress": 9, "malformed": 1}}, true
}

func testStats() ipsec.Stats {
	return ipsec.Stats{
		Mode: ipsec.ModeKernel, Connected: true, CharonPID: 4242, Restarts: 1,
		SAsByState:  map[string]int{"ESTABLISHED": 2, "CONNECTING": 1, "SOMETHING_NEW": 1},
		Refused:     map[string]uint64{ipsec.RefusedNoSA: 4, ipsec.RefusedExpired: 2, "future_kind": 1},
		Accepted:    10,
		IKEFailures: map[string]uint64{"timeout": 3, "charon unreachable": 1},
		SADowns:     5,
		CertExpires: map[string]time.Time{"CN=hub1, O=dmvpn": time.Unix(1798761600, 0), "CN=old, O=dmvpn": time.Unix(1767225600, 0)},
	}
}

// family returns a metric family by name, or nil.
func family(fams []*dto.MetricFamily, name string) *dto.MetricFamily {
	for _, f := range fams {
		if f.GetName() == name {
			return f
		}
	}
	return nil
}

func TestIPsecMetrics(t *testing.T) {
	m := New(cryptoSource{fakeSource: fakeSource{eng: fakeEngine{}}, c: fakeCrypto{testStats()}})
	fams, err := m.Registry().Gather() // fails on a series collected twice
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"dmvpn_ipsec_sas", []string{"state", "established"}, 2},
		{"dmvpn_ipsec_sas", []string{"state", "connecting"}, 1},
		{"dmvpn_ipsec_sas", []string{"state", "rekeying"}, 0},
		{"dmvpn_ipsec_sas", []string{"state", "something_new"}, 1},
		{"dmvpn_ipsec_ike_failures_total", []string{"reason", "timeout"}, 3},
		{"dmvpn_ipsec_ike_failures_total", []string{"reason", "charon unreachable"}, 1},
		{"dmvpn_ipsec_registrations_refused_total", []string{"reason", "no_sa"}, 4},
		{"dmvpn_ipsec_registrations_refused_total", []string{"reason", "certificate_expired"}, 2},
		{"dmvpn_ipsec_registrations_refused_total", []string{"reason", "gre_mismatch"}, 0},
		{"dmvpn_ipsec_registrations_refused_total", []string{"reason", "future_kind"}, 1},
		{"dmvpn_ipsec_registrations_accepted_total", nil, 10},
		{"dmvpn_ipsec_sa_downs_total", nil, 5},
		{"dmvpn_ipsec_charon_restarts_total", nil, 1},
		{"dmvpn_ipsec_charon_up", nil, 1},
		{"dmvpn_ipsec_certificate_expiry_timestamp_seconds", []string{"subject", "CN=hub1, O=dmvpn"}, 1798761600},
		{"dmvpn_ipsec_certificate_expiry_timestamp_seconds", []string{"subject", "CN=old, O=dmvpn"}, 1767225600},
		// plaintext GRE refused, from the data plane's counters
		{"dmvpn_dataplane_dropped_total", []string{"reason", "ingress"}, 9},
		// the IPsec decisions do not feed the NHRP family
		{"dmvpn_nhrp_registrations_total", []string{"result", "accepted"}, 0},
	} {
		got, err := value(fams, c.name, c.labels...)
		if err != nil || got != c.want {
			t.Errorf("%s%v = %v (%v), want %v", c.name, c.labels, got, err, c.want)
		}
	}
	// Every series once: the states and kinds always present, plus the
	// ones seen; nothing else.
	for name, want := range map[string]int{
		"dmvpn_ipsec_sas":                                  len(ikeStates) + 1,
		"dmvpn_ipsec_registrations_refused_total":          len(refusalKinds) + 1,
		"dmvpn_ipsec_ike_failures_total":                   2,
		"dmvpn_ipsec_certificate_expiry_timestamp_seconds": 2,
		"dmvpn_ipsec_registrations_accepted_total":         1,
		"dmvpn_ipsec_sa_downs_total":                       1,
		"dmvpn_ipsec_charon_restarts_total":                1,
		"dmvpn_ipsec_charon_up":                            1,
	} {
		f := family(fams, name)
		if f == nil || len(f.Metric) != want {
			t.Errorf("%s: %v series, want %d", name, f, want)
			continue
		}
		types := map[string]dto.MetricType{"dmvpn_ipsec_sas": dto.MetricType_GAUGE, "dmvpn_ipsec_charon_up": dto.MetricType_GAUGE,
			"dmvpn_ipsec_certificate_expiry_timestamp_seconds": dto.MetricType_GAUGE}
		wantType, ok := types[name]
		if !ok {
			wantType = dto.MetricType_COUNTER
		}
		if f.GetType() != wantType {
			t.Errorf("%s is a %v, want %v", name, f.GetType(), wantType)
		}
	}

	st := testStats()
	st.Connected = false
	fams, err = New(cryptoSource{c: fakeCrypto{st}}).Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	if v, err := value(fams, "dmvpn_ipsec_charon_up"); err != nil || v != 0 {
		t.Errorf("dmvpn_ipsec_charon_up with charon away = %v %v, want 0", v, err)
	}
}

func TestIPsecMetricsOff(t *testing.T) {
	for _, src := range []Source{fakeSource{eng: fakeEngine{}, dp: true}, cryptoSource{fakeSource: fakeSource{eng: fakeEngine{}}}} {
		fams, err := New(src).Registry().Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fams {
			if strings.HasPrefix(f.GetName(), "dmvpn_ipsec_") {
				t.Errorf("%T: %s exported without IPsec", src, f.GetName())
			}
		}
		if family(fams, "dmvpn_up") == nil {
			t.Errorf("%T: the other families are gone", src)
		}
	}
}

func TestIPsecExposition(t *testing.T) {
	m := New(cryptoSource{c: fakeCrypto{testStats()}})
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	b, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		"# TYPE dmvpn_ipsec_sas gauge\n",
		`dmvpn_ipsec_sas{state="established"} 2` + "\n",
		"# TYPE dmvpn_ipsec_registrations_refused_total counter\n",
		`dmvpn_ipsec_registrations_refused_total{reason="no_sa"} 4` + "\n",
		`dmvpn_ipsec_certificate_expiry_timestamp_seconds{subject="CN=old, O=dmvpn"} 1.7672256e+09` + "\n",
		"dmvpn_ipsec_charon_up 1\n",
		`dmvpn_dataplane_dropped_total{reason="ingress"} 9` + "\n",
		"ingress is GRE refused because it arrived in clear",
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("exposition lacks %q", want)
		}
	}
}
