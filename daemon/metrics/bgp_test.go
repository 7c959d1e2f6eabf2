package metrics

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/bgp"
	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/internal/bgptest"
	"github.com/opendmvpn/dmvpn/internal/leakcheck"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// fakeRouting is a node's BGP speaker answering fixed statistics and a
// fixed summary (or err).
type fakeRouting struct {
	st  bgp.Stats
	sum bgp.Summary
	err error
}

func (f fakeRouting) Summary(context.Context) (bgp.Summary, error) { return f.sum, f.err }
func (f fakeRouting) Routes(context.Context, bgp.RouteQuery) ([]bgp.Route, error) {
	return nil, nil
}
func (f fakeRouting) Clear(context.Context, netip.Addr, bool) (int, error) { return 0, nil }
func (f fakeRouting) Stats() bgp.Stats                                     { return f.st }

// routingSource is a node that may run BGP (a nil r: BGP off), as
// dmvpnd's App is.
type routingSource struct {
	fakeSource
	r control.Routing
}

func (s routingSource) BGP() control.Routing { return s.r }

var _ control.RoutingSource = routingSource{}

// neighbor is one line of a summary.
func neighbor(a, state string, received, accepted, refused int, refusedTotal, in, out, flaps uint64) bgp.NeighborStatus {
	return bgp.NeighborStatus{
		SessionState: bgp.SessionState{Address: netip.MustParseAddr(a), AS: 65001, State: state,
			Received: received, Accepted: accepted, UpdatesIn: in, UpdatesOut: out, Flaps: flaps},
		Kind: bgp.KindSpoke, Refused: refused, RefusedTotal: refusedTotal,
	}
}

// testRouting is a hub with five neighbours in four states: no two
// numbers alike, so a field read into the wrong series shows.
func testRouting() fakeRouting {
	return fakeRouting{
		st: bgp.Stats{NeighborsRefused: 6, FIBUpdates: 31, FIBErrors: 2, FIBRoutes: 14,
			PrefixesRefused: map[netip.Addr]uint64{netip.MustParseAddr("172.16.0.2"): 17}},
		sum: bgp.Summary{RouterID: netip.MustParseAddr("172.16.0.1"), AS: 65000, Role: "hub", Mode: "ebgp", KernelRoutes: 14,
			Neighbors: []bgp.NeighborStatus{
				neighbor("172.16.0.2", bgp.StateEstablished, 12, 9, 3, 17, 41, 23, 7),
				neighbor("172.16.0.3", bgp.StateEstablished, 5, 5, 0, 4, 8, 11, 0),
				neighbor("172.16.0.4", bgp.StateActive, 0, 0, 0, 1, 3, 13, 5),
				neighbor("172.16.0.5", bgp.StateOpenSent, 0, 0, 0, 0, 0, 1, 0),
				neighbor("fd00::7", bgp.StateIdle, 0, 0, 0, 19, 27, 29, 10),
			}},
	}
}

// bgpSeries returns every dmvpn_bgp_* series of a scrape as
// `name{label="value",…} type` → value.
func bgpSeries(fams []*dto.MetricFamily) map[string]float64 {
	got := map[string]float64{}
	for _, f := range fams {
		if !strings.HasPrefix(f.GetName(), "dmvpn_bgp_") {
			continue
		}
		for _, m := range f.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			key := fmt.Sprintf("%s{%s} %s", f.GetName(), strings.Join(ls, ","), strings.ToLower(f.GetType().String()))
			switch {
			case m.GetCounter() != nil:
				got[key] = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				got[key] = m.GetGauge().GetValue()
			default:
				got[key+" (neither counter nor gauge)"] = 0
			}
		}
	}
	return got
}

// statsSeries are the families read from Stats alone.
var statsSeries = map[string]float64{
	`dmvpn_bgp_neighbors_refused_total{} counter`:           6,
	`dmvpn_bgp_kernel_routes{} gauge`:                       14,
	`dmvpn_bgp_kernel_writes_total{result="ok"} counter`:    31,
	`dmvpn_bgp_kernel_writes_total{result="error"} counter`: 2,
}

func TestBGPMetrics(t *testing.T) {
	m := New(routingSource{fakeSource: fakeSource{eng: fakeEngine{}}, r: testRouting()})
	fams, err := m.Registry().Gather() // fails on a series collected twice
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{
		`dmvpn_bgp_sessions{state="idle"} gauge`:        1,
		`dmvpn_bgp_sessions{state="connect"} gauge`:     0,
		`dmvpn_bgp_sessions{state="active"} gauge`:      1,
		`dmvpn_bgp_sessions{state="opensent"} gauge`:    1,
		`dmvpn_bgp_sessions{state="openconfirm"} gauge`: 0,
		`dmvpn_bgp_sessions{state="established"} gauge`: 2,
	}
	for _, n := range []struct {
		a                            string
		received, accepted, refused  float64
		refusedTotal, in, out, flaps float64
	}{
		{"172.16.0.2", 12, 9, 3, 17, 41, 23, 7},
		{"172.16.0.3", 5, 5, 0, 4, 8, 11, 0},
		{"172.16.0.4", 0, 0, 0, 1, 3, 13, 5},
		{"172.16.0.5", 0, 0, 0, 0, 0, 1, 0},
		{"fd00::7", 0, 0, 0, 19, 27, 29, 10},
	} {
		want[`dmvpn_bgp_prefixes{kind="received",neighbor="`+n.a+`"} gauge`] = n.received
		want[`dmvpn_bgp_prefixes{kind="accepted",neighbor="`+n.a+`"} gauge`] = n.accepted
		want[`dmvpn_bgp_prefixes{kind="refused",neighbor="`+n.a+`"} gauge`] = n.refused
		want[`dmvpn_bgp_prefixes_refused_total{neighbor="`+n.a+`"} counter`] = n.refusedTotal
		want[`dmvpn_bgp_updates_total{direction="in",neighbor="`+n.a+`"} counter`] = n.in
		want[`dmvpn_bgp_updates_total{direction="out",neighbor="`+n.a+`"} counter`] = n.out
		want[`dmvpn_bgp_flaps_total{neighbor="`+n.a+`"} counter`] = n.flaps
	}
	for k, v := range statsSeries {
		want[k] = v
	}
	if d := cmp.Diff(want, bgpSeries(fams)); d != "" {
		t.Errorf("BGP series (-want +got):\n%s", d)
	}

	// The same through the handler Prometheus scrapes.
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	b, _ := io.ReadAll(rec.Body)
	for _, line := range []string{
		"# TYPE dmvpn_bgp_sessions gauge",
		`dmvpn_bgp_sessions{state="openconfirm"} 0`,
		`dmvpn_bgp_prefixes{kind="refused",neighbor="172.16.0.2"} 3`,
		`dmvpn_bgp_updates_total{direction="out",neighbor="fd00::7"} 29`,
		`dmvpn_bgp_kernel_writes_total{result="error"} 2`,
		"# TYPE dmvpn_bgp_neighbors_refused_total counter",
	} {
		if !strings.Contains(string(b), "\n"+line+"\n") {
			t.Errorf("exposition (status %d) lacks %q", rec.Code, line)
		}
	}
}

// TestBGPMetricsWithoutBGP: a node without BGP, or whose BGP is not
// running (yet), exports no BGP family.
func TestBGPMetricsWithoutBGP(t *testing.T) {
	for name, src := range map[string]Source{
		"no RoutingSource": fakeSource{eng: fakeEngine{}},
		"BGP() nil":        routingSource{fakeSource: fakeSource{eng: fakeEngine{}}},
	} {
		fams, err := New(src).Registry().Gather()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := bgpSeries(fams); len(got) != 0 {
			t.Errorf("%s: BGP series %v, want none", name, got)
		}
		if family(fams, "dmvpn_up") == nil {
			t.Errorf("%s: the rest of the scrape is missing", name)
		}
	}
}

// TestBGPMetricsSummaryFails: when the speaker does not answer, the
// controller's own counters are still exported, but nothing of the
// sessions: no per-neighbour series, and no sessions by state (zeros
// would say no session is up).
func TestBGPMetricsSummaryFails(t *testing.T) {
	r := testRouting()
	r.err = errors.New("speaker stopped")
	fams, err := New(routingSource{fakeSource: fakeSource{eng: fakeEngine{}}, r: r}).Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(statsSeries, bgpSeries(fams)); d != "" {
		t.Errorf("BGP series with the summary failing (-want +got):\n%s", d)
	}
}

// routeSink is the kernel's BGP routes as the controller writes them.
type routeSink struct {
	mu     sync.Mutex
	routes []bgp.KernelRoute
}

func (s *routeSink) SetRoutes(_ context.Context, rs []bgp.KernelRoute) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.routes = slices.Clone(rs)
	return nil
}

func (s *routeSink) Routes(context.Context) ([]bgp.KernelRoute, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.routes), nil
}

// registrations is a hub's NHRP engine with one spoke registered: the
// controller reads it at start and at every resynchronisation (30 s).
type registrations struct{ spoke nhrp.CacheEntry }

func (r registrations) Cache(context.Context) ([]nhrp.CacheEntry, error) {
	return []nhrp.CacheEntry{r.spoke}, nil
}
func (r registrations) Lookup(_ context.Context, p netip.Prefix) (nhrp.CacheEntry, bool, error) {
	return r.spoke, r.spoke.Proto == p, nil
}
func (registrations) NHS(context.Context) ([]nhrp.NHSStatus, error) { return nil, nil }

// TestBGPMetricsLive scrapes a hub's real controller on GoBGP while a
// real GoBGP spoke on a loopback address, registered with NET=10.1.0.0/24
// in its certificate, announces one prefix inside and one outside.
func TestBGPMetricsLive(t *testing.T) {
	// GoBGP leaves a peer's outgoing-queue goroutine behind after Stop
	// (see gobgpLeaks in bgp/gobgp_test.go); everything else must end.
	leakcheck.Check(t, goleak.IgnoreTopFunction("github.com/eapache/channels.(*InfiniteChannel).infiniteBuffer"))
	lo, port := bgptest.LoopbackNet(t)
	hubAddr := lo.Addr().Next()
	spokeAddr := hubAddr.Next()
	spoke := nhrp.CacheEntry{Type: nhrp.TypeDynamic, Proto: netip.PrefixFrom(spokeAddr, 32), NBMA: netip.MustParseAddr("198.51.100.1"),
		Flags: []string{"unique", "registered"}, Identity: "CN=" + spokeAddr.String(),
		Attrs: map[string][]string{"AS": {"65001"}, "NET": {"10.1.0.0/24"}}}
	sink := &routeSink{}
	c, err := bgp.NewController(bgp.Config{Role: bgp.RoleHub, Tunnel: netip.PrefixFrom(hubAddr, 24), Port: port,
		UseCertificates: true, Keepalive: 3 * time.Second, Hold: 9 * time.Second, ConnectRetry: time.Second},
		bgp.Deps{Speaker: bgp.NewGoBGP(zap.NewNop()), Routes: sink, NHRP: registrations{spoke}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	<-c.Started()
	bgptest.RawSpeaker(t, 65001, spokeAddr, hubAddr, bgp.DefaultHubAS, port, "10.1.0.0/24", "10.9.0.0/24")

	m := New(routingSource{fakeSource: fakeSource{eng: fakeEngine{}}, r: c})
	nb := spokeAddr.String()
	want := map[string]float64{
		`dmvpn_bgp_sessions{state="idle"} gauge`:                                 0,
		`dmvpn_bgp_sessions{state="connect"} gauge`:                              0,
		`dmvpn_bgp_sessions{state="active"} gauge`:                               0,
		`dmvpn_bgp_sessions{state="opensent"} gauge`:                             0,
		`dmvpn_bgp_sessions{state="openconfirm"} gauge`:                          0,
		`dmvpn_bgp_sessions{state="established"} gauge`:                          1,
		`dmvpn_bgp_prefixes{kind="received",neighbor="` + nb + `"} gauge`:        2,
		`dmvpn_bgp_prefixes{kind="accepted",neighbor="` + nb + `"} gauge`:        1,
		`dmvpn_bgp_prefixes{kind="refused",neighbor="` + nb + `"} gauge`:         1,
		`dmvpn_bgp_prefixes_refused_total{neighbor="` + nb + `"} counter`:        1,
		`dmvpn_bgp_flaps_total{neighbor="` + nb + `"} counter`:                   0,
		`dmvpn_bgp_neighbors_refused_total{} counter`:                            0,
		`dmvpn_bgp_kernel_routes{} gauge`:                                        1,
		`dmvpn_bgp_kernel_writes_total{result="error"} counter`:                  0,
		`dmvpn_bgp_updates_total{direction="in",neighbor="` + nb + `"} counter`:  1, // at least
		`dmvpn_bgp_updates_total{direction="out",neighbor="` + nb + `"} counter`: 0, // any
		`dmvpn_bgp_kernel_writes_total{result="ok"} counter`:                     1, // at least
	}
	atLeast := map[string]bool{
		`dmvpn_bgp_updates_total{direction="in",neighbor="` + nb + `"} counter`:  true,
		`dmvpn_bgp_updates_total{direction="out",neighbor="` + nb + `"} counter`: true,
		`dmvpn_bgp_kernel_writes_total{result="ok"} counter`:                     true,
	}
	// The series that only grow count as their floor once they reach it.
	floored := func(got map[string]float64) map[string]float64 {
		out := map[string]float64{}
		for k, v := range got {
			if atLeast[k] && v >= want[k] {
				v = want[k]
			}
			out[k] = v
		}
		return out
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		fams, err := m.Registry().Gather()
		if err != nil {
			t.Fatal(err)
		}
		got := floored(bgpSeries(fams))
		if cmp.Equal(want, got) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("BGP series after 30s (-want +got, updates in and kernel writes ok at least, updates out any):\n%s",
				cmp.Diff(want, got))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if rs, _ := sink.Routes(ctx); len(rs) != 1 || rs[0].Dst != netip.MustParsePrefix("10.1.0.0/24") {
		t.Errorf("kernel routes %v, want 10.1.0.0/24 alone", rs)
	}
}
