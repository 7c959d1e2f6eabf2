//go:build linux

package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink"

	"github.com/opendmvpn/dmvpn/failover"
	"github.com/opendmvpn/dmvpn/firewall/redirect"
	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/host"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// kernelRouter answers the engine's route questions from a cache of the
// kernel's routing tables kept by route events (host.RouteCache): no
// table dump per question, and ctx is honoured.
type kernelRouter struct {
	tunIndex int
	cache    *host.RouteCache
	tables   []int // the shortcut table (when shortcuts are on), then main
	mu       sync.Mutex
	networks []netip.Prefix
	// uplinkIfs are the configured uplinks' interfaces: never local,
	// whether or not the main table's default goes through them now.
	uplinkIfs []string
	src       srcCache
}

// srcCache keeps the kernel's answers to Source per route while the
// routing tables do not change (host.RouteCache's generation: address
// changes come with their local routes): the engine asks for its NBMA
// address toward a peer on every packet it builds when no uplink carries
// a default route, and one route request per reply was a fifth of a hub's
// time (bench-nhrp-frr). The kernel picks the source from the route it
// uses (its preferred source, else an address of its device toward its
// gateway), so every destination of one route shares the answer: a hub's
// thousands of spokes behind one default route cost one request.
type srcCache struct {
	mu  sync.Mutex
	gen uint64
	m   map[srcKey]netip.Addr
}

// srcKey is the route a destination takes.
type srcKey struct {
	table int
	dst   netip.Prefix
}

// srcCacheMax bounds the cache: beyond it, it starts over.
const srcCacheMax = 1 << 16

func (c *srcCache) get(gen uint64, k srcKey) (netip.Addr, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen || c.m == nil {
		c.gen, c.m = gen, make(map[srcKey]netip.Addr)
		return netip.Addr{}, false
	}
	a, ok := c.m[k]
	return a, ok
}

func (c *srcCache) put(gen uint64, k srcKey, src netip.Addr) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen || c.m == nil {
		return // the tables changed meanwhile
	}
	if len(c.m) >= srcCacheMax {
		clear(c.m)
	}
	c.m[k] = src
}

func newKernelRouter(ctx context.Context, info gre.Info, cfg Config) (*kernelRouter, error) {
	cache, err := host.NewRouteCache(ctx)
	if err != nil {
		return nil, err
	}
	r := &kernelRouter{tunIndex: info.Index, cache: cache, networks: cfg.Networks}
	if cfg.NHRP.Shortcut {
		r.tables = append(r.tables, cfg.NHRP.ShortcutTableOrDefault())
	}
	r.tables = append(r.tables, host.Main)
	r.setUplinks(cfg.Uplinks)
	return r, nil
}

// setUplinks takes the configured uplinks' interfaces (none for nil).
func (r *kernelRouter) setUplinks(c *failover.Config) {
	var ifs []string
	if c != nil {
		for _, u := range c.Uplinks {
			ifs = append(ifs, u.Interface)
		}
	}
	r.mu.Lock()
	r.uplinkIfs = ifs
	r.mu.Unlock()
}

func (r *kernelRouter) close() error { return r.cache.Close() }

func (r *kernelRouter) setNetworks(n []netip.Prefix) {
	r.mu.Lock()
	r.networks = n
	r.mu.Unlock()
}

// viaLink reports whether a route leaves through the interface.
func viaLink(rt host.Route, index int) bool {
	for _, h := range rt.NextHops {
		if h.Index == index {
			return true
		}
	}
	return false
}

// Route implements nhrp.Router. A destination through the tunnel has the
// route's gateway (or itself) as next hop. A destination elsewhere is
// local — answerable in resolutions — when it is in the configured
// networks, or, without configured networks, when the most specific route
// to it in main is not the default route and not through an uplink (a
// configured uplink's interface, or one that carries a default route).
func (r *kernelRouter) Route(ctx context.Context, dst netip.Addr) (nhrp.RouteInfo, error) {
	r.mu.Lock()
	nets, uplinkIfs := r.networks, r.uplinkIfs
	r.mu.Unlock()
	for _, p := range nets {
		if p.Contains(dst) {
			return nhrp.RouteInfo{Prefix: p, Local: true}, nil
		}
	}
	got, ok, err := r.cache.Lookup(ctx, dst, r.tables...)
	if err != nil {
		return nhrp.RouteInfo{}, err
	}
	if !ok {
		return nhrp.RouteInfo{}, fmt.Errorf("route to %s: %w", dst, syscall.ENETUNREACH)
	}
	if viaLink(got, r.tunIndex) {
		nh := dst
		if len(got.NextHops) == 1 && got.NextHops[0].Gw.IsValid() {
			nh = got.NextHops[0].Gw
		}
		return nhrp.RouteInfo{Prefix: netip.PrefixFrom(dst, dst.BitLen()), NextHop: nh}, nil
	}
	if len(nets) > 0 {
		return nhrp.RouteInfo{Prefix: netip.PrefixFrom(dst, dst.BitLen())}, nil
	}
	best, ok, err := r.cache.Lookup(ctx, dst, host.Main)
	if err != nil {
		return nhrp.RouteInfo{}, err
	}
	if !ok || best.Dst.Bits() == 0 {
		return nhrp.RouteInfo{}, nil
	}
	defaults, err := r.cache.Routes(ctx, host.Main, netip.PrefixFrom(netip.IPv4Unspecified(), 0))
	if dst.Is6() {
		defaults, err = r.cache.Routes(ctx, host.Main, netip.PrefixFrom(netip.IPv6Unspecified(), 0))
	}
	if err != nil {
		return nhrp.RouteInfo{}, err
	}
	uplink := false
	for _, name := range uplinkIfs {
		if l, err := net.InterfaceByName(name); err == nil {
			uplink = uplink || viaLink(best, l.Index)
		}
	}
	for _, d := range defaults {
		for _, h := range best.NextHops {
			uplink = uplink || viaLink(d, h.Index)
		}
	}
	if !viaLink(best, r.tunIndex) && !uplink {
		return nhrp.RouteInfo{Prefix: best.Dst, Local: true}, nil
	}
	return nhrp.RouteInfo{Prefix: best.Dst}, nil
}

// Source returns the local address the kernel uses toward dst: this
// node's NBMA address toward a peer. It asks the kernel (one route
// request, the kernel's source address selection), not a table dump, and
// remembers the answer for the route dst takes until the routing tables
// change.
func (r *kernelRouter) Source(ctx context.Context, dst netip.Addr) (netip.Addr, error) {
	if err := ctx.Err(); err != nil {
		return netip.Addr{}, err
	}
	gen := r.cache.Generation()
	rt, ok, err := r.cache.Lookup(ctx, dst, host.Main)
	if err != nil {
		return netip.Addr{}, err
	}
	key := srcKey{table: host.Main, dst: rt.Dst}
	if ok {
		if a, hit := r.src.get(gen, key); hit {
			return a, nil
		}
	}
	a, err := r.source(dst)
	if err == nil && ok {
		r.src.put(gen, key, a)
	}
	return a, err
}

// source asks the kernel.
func (r *kernelRouter) source(dst netip.Addr) (netip.Addr, error) {
	rs, err := netlink.RouteGet(net.IP(dst.AsSlice()))
	if err != nil || len(rs) == 0 {
		return netip.Addr{}, fmt.Errorf("route to %s: %w", dst, err)
	}
	a, ok := netip.AddrFromSlice(rs[0].Src)
	if !ok {
		return netip.Addr{}, fmt.Errorf("no source address toward %s", dst)
	}
	return a.Unmap(), nil
}

// neighLimitsExist reports whether the kernel has the neighbour table
// limits here (the initial network namespace only).
func neighLimitsExist(k host.Kernel, fam string) bool {
	_, err := k.ReadSysctl(neighLimitKey(fam, 2))
	return !errors.Is(err, fs.ErrNotExist)
}

// startRedirect starts the hub's redirect detection.
func startRedirect(ctx context.Context, cfg Config, eng *nhrp.Engine, table redirect.TableOwner) (redirect.Watcher, error) {
	w, err := redirect.Start(context.WithoutCancel(ctx), redirect.Config{Interface: cfg.Tunnel.Name, Group: cfg.RedirectGroup, Table: table}, eng.Relayed)
	if err != nil {
		return nil, err
	}
	return w, nil
}
