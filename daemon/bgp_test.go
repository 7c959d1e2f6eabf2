package daemon

import (
	"context"
	"net/netip"
	"testing"

	"github.com/opendmvpn/dmvpn/bgp"
	"github.com/opendmvpn/dmvpn/host"
	"github.com/opendmvpn/dmvpn/host/hosttest"
)

// TestBGPRoutesKeepConnected: BGP learning a prefix the node has
// connected or static leaves those routes alone (BGP's go in at
// BGPMetric beside them), and withdrawing it takes only BGP's away.
func TestBGPRoutesKeepConnected(t *testing.T) {
	const proto = 186
	k := hosttest.NewKernel()
	k.AddLink("lan0", 2)
	k.AddLink("gre1", 3)
	connected := host.Route{Table: host.Main, Dst: netip.MustParsePrefix("10.9.0.0/24"), Src: netip.MustParseAddr("10.9.0.1"),
		NextHops: []host.NextHop{{Dev: "lan0"}}, Protocol: 2}
	static := host.Route{Table: host.Main, Dst: netip.MustParsePrefix("10.8.0.0/24"),
		NextHops: []host.NextHop{{Gw: netip.MustParseAddr("10.9.0.254"), Dev: "lan0"}}, Protocol: 4}
	k.AddRoute(connected)
	k.AddRoute(static)
	m, err := host.New(host.Options{Kernel: k})
	if err != nil {
		t.Fatal(err)
	}
	hc, err := m.Client(host.Owner{Name: "bgp", RouteProtocol: proto})
	if err != nil {
		t.Fatal(err)
	}
	sink := BGPRoutes(hc, k, "gre1", proto)
	ctx := context.Background()
	learned := []bgp.KernelRoute{
		{Dst: netip.MustParsePrefix("10.9.0.0/24"), NextHops: []netip.Addr{netip.MustParseAddr("172.16.0.2")}},
		{Dst: netip.MustParsePrefix("10.8.0.0/24"), NextHops: []netip.Addr{netip.MustParseAddr("172.16.0.2")}},
		{Dst: netip.MustParsePrefix("10.7.0.0/24"), NextHops: []netip.Addr{netip.MustParseAddr("172.16.0.3")}},
	}
	if err := sink.SetRoutes(ctx, learned); err != nil {
		t.Fatal(err)
	}
	byProto := func(p int) map[netip.Prefix]host.Route {
		rs, err := k.Routes(ctx, host.IPv4, p)
		if err != nil {
			t.Fatal(err)
		}
		out := map[netip.Prefix]host.Route{}
		for _, r := range rs {
			out[r.Dst] = r
		}
		return out
	}
	for _, own := range []host.Route{connected, static} {
		got, ok := byProto(own.Protocol)[own.Dst]
		if !ok || got.Metric != 0 || len(got.NextHops) != 1 || got.NextHops[0].Dev != "lan0" {
			t.Errorf("protocol %d's %v after BGP learned it: %+v (there: %v)", own.Protocol, own.Dst, got, ok)
		}
	}
	ours := byProto(proto)
	if len(ours) != 3 {
		t.Fatalf("BGP's routes: %v; want the 3 learned", ours)
	}
	for _, r := range ours {
		if r.Metric != BGPMetric || len(r.NextHops) != 1 || r.NextHops[0].Dev != "gre1" || !r.NextHops[0].Onlink {
			t.Errorf("BGP route %+v: want metric %d, on-link through gre1", r, BGPMetric)
		}
	}
	if err := sink.SetRoutes(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if n := len(byProto(proto)); n != 0 {
		t.Errorf("%d BGP routes left after the withdrawal", n)
	}
	if _, ok := byProto(2)[connected.Dst]; !ok {
		t.Errorf("the connected route went with BGP's")
	}
	if _, ok := byProto(4)[static.Dst]; !ok {
		t.Errorf("the static route went with BGP's")
	}
}
