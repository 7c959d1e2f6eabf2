package control

import (
	"context"
	"net/netip"
	"net/url"
	"testing"

	"github.com/opendmvpn/dmvpn/bgp"
)

// fakeRouting answers the routes of the longest or exact prefix the way
// the speaker does and records the queries.
type fakeRouting struct {
	rib     []bgp.Route
	queries []bgp.RouteQuery
}

func (f *fakeRouting) Summary(context.Context) (bgp.Summary, error) { return bgp.Summary{}, nil }
func (f *fakeRouting) Clear(context.Context, netip.Addr, bool) (int, error) {
	return 0, nil
}
func (f *fakeRouting) Stats() bgp.Stats { return bgp.Stats{} }

func (f *fakeRouting) Routes(_ context.Context, q bgp.RouteQuery) ([]bgp.Route, error) {
	f.queries = append(f.queries, q)
	out := []bgp.Route{}
	best := -1
	for _, r := range f.rib {
		switch {
		case q.Prefix.IsValid() && r.Prefix == q.Prefix:
			out = append(out, r)
		case q.Address.IsValid() && r.Prefix.Contains(q.Address) && r.Prefix.Bits() > best:
			best, out = r.Prefix.Bits(), []bgp.Route{r}
		}
	}
	return out, nil
}

// bgpDaemon is a node running BGP.
type bgpDaemon struct {
	fakeDaemon
	r *fakeRouting
}

func (d *bgpDaemon) BGP() Routing { return d.r }

// TestBGPRoutesAddressLongestMatch: `show ip bgp ADDRESS` asks for the
// longest prefix containing the address, `show ip bgp PREFIX` for that
// prefix.
func TestBGPRoutesAddressLongestMatch(t *testing.T) {
	r := &fakeRouting{rib: []bgp.Route{
		{Prefix: netip.MustParsePrefix("10.0.0.0/8")}, {Prefix: netip.MustParsePrefix("10.1.0.0/24")},
	}}
	_, c, _ := serve(t, &bgpDaemon{r: r})
	for _, tc := range []struct{ arg, want string }{
		{"10.1.0.7", "10.1.0.0/24"},
		{"10.2.0.7", "10.0.0.0/8"},
		{"10.1.0.0/24", "10.1.0.0/24"},
		{"10.1.0.7/24", "10.1.0.0/24"},
		{"10.1.0.7/32", ""},
	} {
		var rs []bgp.Route
		if err := c.Get(context.Background(), PathBGPRoutes+"?"+url.Values{"prefix": {tc.arg}}.Encode(), &rs); err != nil {
			t.Fatal(err)
		}
		got := ""
		if len(rs) > 0 {
			got = rs[0].Prefix.String()
		}
		if got != tc.want || len(rs) > 1 {
			t.Errorf("routes of %s: %v (query %+v), want %s", tc.arg, rs, r.queries[len(r.queries)-1], tc.want)
		}
	}
}
