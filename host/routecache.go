package host

import (
	"context"
	"net/netip"
	"slices"
	"sync"
)

// RouteCache mirrors the kernel's routes, every table of both families,
// kept by netlink route events (NewRouteCache), so a lookup is a few map
// reads and never a table dump. It is safe for concurrent use.
type RouteCache struct {
	mu     sync.RWMutex
	tables map[int]map[netip.Prefix][]Route // by table, then destination; sorted by metric
	// lens counts the destinations of each prefix length per table and
	// family, so that a lookup tries only the lengths a table has (a
	// main table of a few routes: three map reads, not 33).
	lens   map[int]*prefixLens
	events uint64 // route events applied
	gen    uint64 // changes applied: events and reloads

	stop chan struct{}
	done chan struct{}
}

func newRouteCache() *RouteCache {
	return &RouteCache{tables: map[int]map[netip.Prefix][]Route{}, lens: map[int]*prefixLens{}, stop: make(chan struct{}), done: make(chan struct{})}
}

// Lookup returns the route the kernel would use for dst among tables,
// tried in the order given as rules would (a throw route goes on to the
// next table): the longest prefix, then the lowest metric. ok is false
// when no table has a route to dst. It fails only when ctx is done.
func (c *RouteCache) Lookup(ctx context.Context, dst netip.Addr, tables ...int) (r Route, ok bool, err error) {
	if err := ctx.Err(); err != nil {
		return Route{}, false, err
	}
	dst = dst.Unmap()
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, t := range tables {
		if t == 0 {
			t = Main
		}
		tab := c.tables[t]
		if tab == nil {
			continue
		}
		lens := c.lens[t].of(dst.Is4())
		for bits := dst.BitLen(); bits >= 0; bits-- {
			if lens[bits] == 0 {
				continue
			}
			p, _ := dst.Prefix(bits)
			if rs := tab[p]; len(rs) > 0 {
				if rs[0].Type == ThrowRoute {
					break
				}
				return cloneRoute(rs[0]), true, nil
			}
		}
	}
	return Route{}, false, nil
}

// Routes returns the routes to exactly dst in a table (all metrics):
// Routes(ctx, Main, 0.0.0.0/0) are the default routes.
func (c *RouteCache) Routes(ctx context.Context, table int, dst netip.Prefix) ([]Route, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if table == 0 {
		table = Main
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out []Route
	for _, r := range c.tables[table][dst.Masked()] {
		out = append(out, cloneRoute(r))
	}
	return out, nil
}

// Generation counts the changes the cache applied (route events, reloads
// after a lost subscription). What is derived from the routing tables —
// the kernel's source address toward a destination, which follows the
// address and route changes that come with local routes — stays valid
// while it does not move.
func (c *RouteCache) Generation() uint64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.gen
}

func cloneRoute(r Route) Route {
	r.NextHops = slices.Clone(r.NextHops)
	return r
}

// update applies one route event.
func (c *RouteCache) update(r Route, deleted bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.events++
	c.gen++
	c.put(r, deleted)
}

// put adds, replaces (same key) or deletes a route; c.mu is held.
func (c *RouteCache) put(r Route, deleted bool) {
	r = r.normal()
	tab := c.tables[r.Table]
	if tab == nil {
		if deleted {
			return
		}
		tab = map[netip.Prefix][]Route{}
		c.tables[r.Table] = tab
	}
	rs := tab[r.Dst]
	i := slices.IndexFunc(rs, func(x Route) bool { return x.Metric == r.Metric })
	switch {
	case deleted && i >= 0:
		rs = slices.Delete(rs, i, i+1)
	case deleted:
	case i >= 0:
		rs[i] = r
	default:
		j := slices.IndexFunc(rs, func(x Route) bool { return x.Metric > r.Metric })
		if j < 0 {
			j = len(rs)
		}
		rs = slices.Insert(rs, j, r)
	}
	_, had := tab[r.Dst]
	if len(rs) == 0 {
		delete(tab, r.Dst)
	} else {
		tab[r.Dst] = rs
	}
	if has := len(rs) > 0; has != had {
		l := c.lens[r.Table]
		if l == nil {
			l = &prefixLens{}
			c.lens[r.Table] = l
		}
		d := int32(1)
		if !has {
			d = -1
		}
		l.of(r.Dst.Addr().Is4())[r.Dst.Bits()] += d
	}
}

// prefixLens counts a table's destinations by prefix length.
type prefixLens struct {
	v4 [33]int32
	v6 [129]int32
}

// of returns the counts of one family (all zero for a nil l).
func (l *prefixLens) of(v4 bool) []int32 {
	if l == nil {
		return zeroLens[:]
	}
	if v4 {
		return l.v4[:]
	}
	return l.v6[:]
}

var zeroLens [129]int32

// reset replaces the whole cache with a dump, then applies the events
// that arrived during it (they are newer than or as new as the dump).
func (c *RouteCache) reset(dump []Route) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	c.tables = map[int]map[netip.Prefix][]Route{}
	c.lens = map[int]*prefixLens{}
	for _, r := range dump {
		c.put(r, false)
	}
}

// Close stops following the kernel and waits for the goroutine.
func (c *RouteCache) Close() error {
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	<-c.done
	return nil
}
