package userspace

import (
	"errors"
	"net/netip"
	"sync/atomic"
	"testing"
)

func TestRouteCache(t *testing.T) {
	var gen atomic.Uint64
	table := map[netip.Addr]netip.Addr{netip.MustParseAddr("10.2.0.5"): netip.MustParseAddr("10.0.0.2")}
	calls := 0
	fail := false
	lookup := func(dst, src netip.Addr) (netip.Addr, bool, error) {
		calls++
		if fail {
			return netip.Addr{}, false, errors.New("netlink down")
		}
		nh, ok := table[dst]
		return nh, ok, nil
	}
	c := newRouteCache(lookup, &gen)
	dst := netip.MustParseAddr("10.2.0.5")
	for i := 0; i < 3; i++ {
		if nh, ok := c.nextHop(dst, netip.Addr{}); !ok || nh != netip.MustParseAddr("10.0.0.2") {
			t.Fatalf("nextHop = %v %v", nh, ok)
		}
	}
	if calls != 1 {
		t.Fatalf("%d kernel lookups for one destination, want 1 (cached)", calls)
	}
	// negative answers are cached too
	other := netip.MustParseAddr("172.16.0.1")
	c.nextHop(other, netip.Addr{})
	c.nextHop(other, netip.Addr{})
	if calls != 2 {
		t.Fatalf("negative answer not cached: %d lookups", calls)
	}
	// the source is part of the key
	c.nextHop(dst, netip.MustParseAddr("10.0.0.1"))
	if calls != 3 {
		t.Fatalf("source not in the key: %d lookups", calls)
	}
	// a routing change invalidates
	table[dst] = netip.MustParseAddr("10.0.0.3")
	gen.Add(1)
	if nh, _ := c.nextHop(dst, netip.Addr{}); nh != netip.MustParseAddr("10.0.0.3") {
		t.Fatalf("after change next hop %v, want 10.0.0.3", nh)
	}
	// errors are not cached
	gen.Add(1)
	fail = true
	if _, ok := c.nextHop(dst, netip.Addr{}); ok {
		t.Fatal("lookup error gave a next hop")
	}
	fail = false
	if _, ok := c.nextHop(dst, netip.Addr{}); !ok {
		t.Fatal("an error was cached")
	}
	if c.errors != 1 {
		t.Fatalf("errors = %d", c.errors)
	}
}

func TestRouteCacheBounded(t *testing.T) {
	var gen atomic.Uint64
	c := newRouteCache(func(dst, src netip.Addr) (netip.Addr, bool, error) { return dst, true, nil }, &gen)
	for i := 0; i < maxRouteCache+10; i++ {
		c.nextHop(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), netip.Addr{})
	}
	if len(c.m) > maxRouteCache {
		t.Fatalf("cache holds %d entries", len(c.m))
	}
}
