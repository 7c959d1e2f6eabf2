package userspace

import (
	"net/netip"
	"sync/atomic"
)

// maxRouteCache bounds the per-destination next-hop cache; when full it is
// emptied (a scan of many destinations must not grow memory).
const maxRouteCache = 1 << 16

// lookupFunc asks the kernel for the tunnel next hop of a packet; ok false
// means the kernel has no route through the tunnel for it.
type lookupFunc func(dst, src netip.Addr) (nh netip.Addr, ok bool, err error)

type rcKey struct{ dst, src netip.Addr }

type rcVal struct {
	nh netip.Addr
	ok bool
}

// routeCache caches the kernel's next-hop decisions per (destination,
// local source). Any route, rule, address or link change bumps gen and
// empties the cache at the next lookup. Owned by the transmit goroutine.
type routeCache struct {
	lookup lookupFunc
	gen    *atomic.Uint64
	seen   uint64
	m      map[rcKey]rcVal
	// lookups and errors count kernel queries (for tests and profiling).
	lookups, errors uint64
}

func newRouteCache(lookup lookupFunc, gen *atomic.Uint64) *routeCache {
	return &routeCache{lookup: lookup, gen: gen, seen: gen.Load(), m: make(map[rcKey]rcVal)}
}

// nextHop returns the tunnel next hop for a packet from src to dst. src is
// part of the key only when the caller passes it (a local source).
func (c *routeCache) nextHop(dst, src netip.Addr) (netip.Addr, bool) {
	if g := c.gen.Load(); g != c.seen {
		clear(c.m)
		c.seen = g
	}
	k := rcKey{dst, src}
	if v, ok := c.m[k]; ok {
		return v.nh, v.ok
	}
	c.lookups++
	nh, ok, err := c.lookup(dst, src)
	if err != nil {
		// not cached: a transient failure must not stick
		c.errors++
		return netip.Addr{}, false
	}
	if len(c.m) >= maxRouteCache {
		clear(c.m)
	}
	c.m[k] = rcVal{nh, ok}
	return nh, ok
}
