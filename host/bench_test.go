package host_test

import (
	"context"
	"net/netip"
	"testing"

	"github.com/opendmvpn/dmvpn/host"
	"github.com/opendmvpn/dmvpn/host/hosttest"
)

// BenchmarkSetRoutes is BGP's FIB through host: Sets of 5,000 routes
// with one changed each time (the common case: one neighbour's update),
// on the in-memory kernel. The plan is linear in the routes (what is
// there indexed once, a listing per table rather than per route: it was
// quadratic, 14 s a Set); the kernel's figures are bench-bgp's.
func BenchmarkSetRoutes(b *testing.B) {
	const n = 5000
	routes := make([]host.Route, n)
	for i := range routes {
		routes[i] = host.Route{Table: host.Main, Dst: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24),
			NextHops: []host.NextHop{{Gw: netip.AddrFrom4([4]byte{172, 16, byte(i >> 8), byte(i)}), Dev: "gre1", Onlink: true}}}
	}
	ctx := context.Background()
	b.Run("one changed", func(b *testing.B) {
		k := hosttest.NewKernel()
		k.AddLink("gre1", 5)
		m, err := host.New(host.Options{Kernel: k})
		if err != nil {
			b.Fatal(err)
		}
		c, err := m.Client(bgpOwner)
		if err != nil {
			b.Fatal(err)
		}
		if err := c.Set(ctx, &host.Config{Routes: routes}); err != nil {
			b.Fatal(err)
		}
		changed := append([]host.Route(nil), routes...)
		for i := 0; b.Loop(); i++ {
			changed[i%n].NextHops = []host.NextHop{{Gw: netip.AddrFrom4([4]byte{172, 17, 0, byte(i)}), Dev: "gre1", Onlink: true}}
			if err := c.Set(ctx, &host.Config{Routes: changed}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
