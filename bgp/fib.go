package bgp

import (
	"context"
	"net/netip"
	"slices"
	"time"

	"go.uber.org/zap"
)

// KernelRoute is a route BGP wants in the kernel: to Dst through the
// tunnel via each of NextHops (several: ECMP).
type KernelRoute struct {
	Dst      netip.Prefix
	NextHops []netip.Addr
}

// RouteSink is where the kernel routes go: the host-state owner, which
// keeps them in the main table with BGP's protocol number, each next hop
// on-link through the tunnel.
type RouteSink interface {
	// SetRoutes makes the kernel's routes of BGP's protocol exactly
	// these.
	SetRoutes(ctx context.Context, routes []KernelRoute) error
	// Routes lists the kernel's routes of BGP's protocol (at start: what
	// a previous run left).
	Routes(ctx context.Context) ([]KernelRoute, error)
}

// fib turns best paths into the kernel's routes, off the controller's
// goroutine: every change of best paths reads the RIB again and hands the
// whole set to the sink (coalesced: changes that arrive during a write are
// one more read).
type fib struct {
	c          *Controller
	last       []KernelRoute
	pushed     bool
	stale      map[netip.Prefix]KernelRoute
	staleUntil time.Time
}

func newFIB(c *Controller) *fib { return &fib{c: c} }

// fibStale returns the previous run's routes still held (tests).
func (c *Controller) fibStale() []netip.Prefix {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.staleNow)
}

// fibSpacing is the shortest time between two reads of the RIB for the
// kernel (longer after a slow one).
const fibSpacing = 50 * time.Millisecond

// fibSpacingMax bounds the wait after a slow read.
const fibSpacingMax = time.Second

// retryAfter is how soon a failed write is tried again.
const retryAfter = time.Second

func (f *fib) run(ctx context.Context) {
	c := f.c
	// Graceful restart: the routes a previous run left stay until the
	// neighbours gave them again or the restart time ran out; without
	// graceful restart they go at once.
	if prev, err := c.deps.Routes.Routes(ctx); err != nil {
		c.log.Warn("reading the kernel's BGP routes", zap.Error(err))
	} else if len(prev) > 0 && c.cfg.RestartTime > 0 {
		f.stale = map[netip.Prefix]KernelRoute{}
		for _, r := range prev {
			f.stale[r.Dst] = r
		}
		f.staleUntil = time.Now().Add(c.cfg.RestartTime)
		c.log.Info("keeping the previous run's BGP routes for the restart time", zap.Int("routes", len(prev)),
			zap.Duration("restart_time", c.cfg.RestartTime))
	}
	var retry <-chan time.Time
	staleTimer := time.NewTimer(time.Until(f.staleUntil))
	defer staleTimer.Stop()
	for {
		synced := time.Now()
		err := f.sync(ctx)
		// The next read waits fibSpacing, or four times as long as this
		// one took (up to fibSpacingMax): the RIB read holds GoBGP's
		// lock, and a large RIB changing fast (a thousand spokes
		// converging) must leave GoBGP most of its time.
		spacing := min(max(fibSpacing, 4*time.Since(synced)), fibSpacingMax)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			c.log.Warn("setting the kernel's BGP routes", zap.Error(err))
			retry = time.After(retryAfter)
		} else {
			retry = nil
		}
		select {
		case <-ctx.Done():
			return
		case <-c.fibWake:
			// Changes that come while a sync runs or soon after wait for
			// the next one: a full RIB read and kernel diff at most every
			// spacing, however fast best paths change.
			if d := spacing - time.Since(synced); d > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(d):
				}
			}
		case <-retry:
		case <-staleTimer.C:
			if len(f.stale) > 0 {
				c.log.Info("restart time over: the previous run's BGP routes not given again go", zap.Int("routes", len(f.stale)))
			}
			f.stale = nil
		}
	}
}

// sync reads the RIB and writes the kernel if anything changed.
func (f *fib) sync(ctx context.Context) error {
	c := f.c
	rib, err := c.deps.Speaker.Routes(ctx, RouteQuery{Table: TableBest})
	if err != nil {
		return err
	}
	want := f.desired(rib)
	var stale []netip.Prefix
	for p := range f.stale {
		stale = append(stale, p)
	}
	c.mu.Lock()
	c.staleNow = stale
	c.mu.Unlock()
	if f.pushed && slices.EqualFunc(want, f.last, equalRoute) {
		return nil
	}
	err = c.deps.Routes.SetRoutes(ctx, want)
	c.mu.Lock()
	if err != nil {
		c.stats.FIBErrors++
	} else {
		c.stats.FIBUpdates++
		c.stats.FIBRoutes = len(want)
	}
	c.mu.Unlock()
	if err != nil {
		return err
	}
	f.last, f.pushed = want, true
	return nil
}

// desired is the kernel's route set for a RIB: the best and multipath
// paths learned from neighbours whose next hop is in the tunnel network,
// plus the previous run's routes still held, sorted.
func (f *fib) desired(rib []Route) []KernelRoute {
	tunnel := f.c.cfg.Tunnel.Masked()
	local := map[netip.Prefix]bool{}
	for _, r := range rib {
		if r.Best && r.Local() {
			local[r.Prefix] = true
		}
	}
	var usable []Route
	for _, r := range rib {
		if !local[r.Prefix] && tunnel.Contains(r.NextHop) && r.NextHop != f.c.cfg.Tunnel.Addr() {
			usable = append(usable, r)
		}
	}
	out := kernelRoutes(usable)
	have := map[netip.Prefix]bool{}
	for _, r := range out {
		have[r.Dst] = true
	}
	for p, r := range f.stale {
		if have[p] {
			delete(f.stale, p)
			continue
		}
		out = append(out, r)
	}
	for i := range out {
		slices.SortFunc(out[i].NextHops, netip.Addr.Compare)
	}
	slices.SortFunc(out, func(a, b KernelRoute) int { return comparePrefix(a.Dst, b.Dst) })
	return out
}

func equalRoute(a, b KernelRoute) bool {
	return a.Dst == b.Dst && slices.Equal(a.NextHops, b.NextHops)
}
