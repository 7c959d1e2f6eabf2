package daemon

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/opendmvpn/dmvpn/failover"
	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/internal/netnstest"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// TestSourceFollowsRoutes, in a scratch namespace (root): the router's
// answer for the source address toward a peer is remembered per route, and a route
// change that moves the source is seen at once (the cache follows the
// route cache's generation).
func TestSourceFollowsRoutes(t *testing.T) {
	if !netnstest.Run(t, "dmsrc") {
		return
	}
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "wan0"}, PeerName: "wan0p"}); err != nil {
		t.Fatal(err)
	}
	l, err := netlink.LinkByName("wan0")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"192.0.2.1/24", "192.0.2.2/24"} {
		addr, _ := netlink.ParseAddr(a)
		if err := netlink.AddrAdd(l, addr); err != nil {
			t.Fatal(err)
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	r, err := newKernelRouter(ctx, gre.Info{Index: 999}, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.close()
	peer := netip.MustParseAddr("192.0.2.9")
	want := func(src string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			got, err := r.Source(ctx, peer)
			if err == nil && got == netip.MustParseAddr(src) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("source toward %s: %v, %v; want %s", peer, got, err, src)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	want("192.0.2.1")
	// The answer is remembered for the route: another destination of it
	// costs no route request.
	gen := r.cache.Generation()
	if a, ok := r.src.get(gen, srcKey{table: 254, dst: netip.MustParsePrefix("192.0.2.0/24")}); !ok || a != netip.MustParseAddr("192.0.2.1") {
		t.Fatalf("not remembered: %v %v", a, ok)
	}
	_, dst, _ := net.ParseCIDR("192.0.2.0/24")
	rt := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: dst, Src: net.ParseIP("192.0.2.2"), Scope: netlink.SCOPE_LINK, Protocol: 2}
	if err := netlink.RouteReplace(rt); err != nil {
		t.Fatal(err)
	}
	want("192.0.2.2")
}

// TestUplinkNeverLocal, in a scratch namespace (root): a network on an
// uplink's interface is never local to resolutions, also while no default
// route goes through it (its default left the main table when it went
// down); without the uplink configured, the same network is local — the
// answer follows a reload's uplinks.
func TestUplinkNeverLocal(t *testing.T) {
	if !netnstest.Run(t, "dmupl") {
		return
	}
	for _, name := range []string{"wan0", "lan0"} {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}); err != nil {
			t.Fatal(err)
		}
	}
	for name, a := range map[string]string{"wan0": "198.51.100.1/28", "lan0": "10.1.0.1/24"} {
		l, err := netlink.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		addr, _ := netlink.ParseAddr(a)
		if err := netlink.AddrAdd(l, addr); err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	uplinks := &failover.Config{Uplinks: []failover.Uplink{{Name: "isp1", Interface: "wan0"}}}
	r, err := newKernelRouter(ctx, gre.Info{Index: 999}, Config{Uplinks: uplinks})
	if err != nil {
		t.Fatal(err)
	}
	defer r.close()
	local := func(dst string) bool {
		t.Helper()
		var ri nhrp.RouteInfo
		deadline := time.Now().Add(10 * time.Second)
		for {
			ri, err = r.Route(ctx, netip.MustParseAddr(dst))
			if err == nil && ri.Prefix.IsValid() || time.Now().After(deadline) {
				break
			}
			time.Sleep(10 * time.Millisecond) // the route cache learns the connected routes
		}
		if err != nil {
			t.Fatalf("route to %s: %v", dst, err)
		}
		return ri.Local
	}
	if !local("10.1.0.5") {
		t.Fatal("the LAN is not local")
	}
	if local("198.51.100.5") {
		t.Error("the uplink's network is local to resolutions")
	}
	r.setUplinks(nil)
	if !local("198.51.100.5") {
		t.Error("without uplinks configured, the network on wan0 is not local: the check above proves nothing")
	}
	r.setUplinks(uplinks)
	if local("198.51.100.5") {
		t.Error("the uplink's network is local again after a reload that configures it")
	}
}
