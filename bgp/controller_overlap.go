package bgp

import (
	"context"
	"net/netip"
	"slices"

	"go.uber.org/zap"
)

// excludedFor is what spoke a may not announce inside its networks: the
// other spoke neighbours' networks strictly inside one of them, sorted
// (Neighbor.Excluded). It walks the subtrees of a's networks in the index:
// time proportional to the networks found.
func (c *Controller) excludedFor(a netip.Addr, networks []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range networks {
		c.nets.inside(p, func(e netip.Prefix, owner netip.Addr) {
			if owner != a {
				out = append(out, e)
			}
		})
	}
	slices.SortFunc(out, comparePrefix)
	return slices.Compact(out)
}

// spokeNetworks follows a neighbour from before to after (either the zero
// Neighbor: added, removed) in the index of spoke networks, and re-filters
// the other spokes whose exclusions that changes: only those with a network
// strictly covering one that came or went. Per change that is at most 32
// index nodes per network that came or went, plus for each spoke found the
// walk of its networks' subtrees and one SetNeighbor if its exclusions
// differ: proportional to the overlaps, nothing for spokes with disjoint
// networks, however many.
func (c *Controller) spokeNetworks(ctx context.Context, a netip.Addr, before, after Neighbor) {
	var old, now []netip.Prefix
	if before.Kind == KindSpoke {
		old = before.Networks
	}
	if after.Kind == KindSpoke {
		now = after.Networks
	}
	var changed []netip.Prefix
	for _, p := range old {
		if !slices.Contains(now, p) {
			c.nets.remove(p, a)
			changed = append(changed, p)
		}
	}
	for _, p := range now {
		if !slices.Contains(old, p) {
			c.nets.add(p, a)
			changed = append(changed, p)
		}
	}
	var others []netip.Addr
	for _, p := range changed {
		c.nets.covering(p, func(_ netip.Prefix, owner netip.Addr) {
			if owner != a && !slices.Contains(others, owner) {
				others = append(others, owner)
			}
		})
	}
	slices.SortFunc(others, netip.Addr.Compare)
	for _, o := range others {
		c.reexclude(ctx, o, a)
	}
}

// reexclude gives spoke o its exclusions again after spoke because's
// networks changed: through SetNeighbor (the filter is replaced, what o
// sent judged again without o sending it again), only if they differ. A
// failure leaves o as it was, for the next resynchronisation.
func (c *Controller) reexclude(ctx context.Context, o, because netip.Addr) {
	c.mu.Lock()
	n, ok := c.have[o]
	c.mu.Unlock()
	if !ok || n.Kind != KindSpoke {
		return
	}
	ex := c.excludedFor(o, n.Networks)
	if slices.Equal(ex, n.Excluded) {
		return
	}
	n.Excluded = ex
	if err := c.deps.Speaker.SetNeighbor(ctx, n); err != nil {
		c.log.Warn("re-filtering a neighbour", zap.Stringer("peer", o), zap.Error(err))
		c.mu.Lock()
		c.resync = true
		c.mu.Unlock()
		return
	}
	c.mu.Lock()
	c.have[o] = n
	c.dirty[o] = true // judged again under the new filter
	c.mu.Unlock()
	poke(c.wake)
	c.log.Info("neighbour re-filtered", zap.Stringer("peer", o), zap.Stringers("networks", n.Networks),
		zap.Stringers("excluded", n.Excluded), zap.Stringer("because_of", because))
}
