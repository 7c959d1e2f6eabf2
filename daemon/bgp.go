package daemon

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/bgp"
	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/host"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// BGP returns the BGP speaker's controller (nil without BGP or before
// Ready).
func (d *Daemon) BGP() *bgp.Controller {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.bgp
}

// newBGP makes the BGP controller before the engine exists (it observes
// the engine's events from its first one) and its host client: the
// routes of BGP's protocol are its own.
func (d *Daemon) newBGP(cfg Config, info gre.Info) (*bgp.Controller, error) {
	c := *cfg.BGP
	c.Tunnel = info.Prefix
	c.ProtectedNBMA = append(slices.Clone(c.ProtectedNBMA), info.NBMA...)
	// Only a kernel tunnel kept across the restart forwards while dmvpnd
	// is away: otherwise the neighbours must not keep our routes.
	c.HelperOnly = !(info.Caps.KernelNeighbors && cfg.Tunnel.KeepState)
	if c.Role == bgp.RoleHub {
		for _, n := range cfg.NHRP.StaticMaps {
			c.ProtectedNBMA = append(c.ProtectedNBMA, n.NBMA)
		}
	}
	hc, err := d.host.Client(host.Owner{Name: "bgp", RouteProtocol: cfg.BGPProtocol})
	if err != nil {
		return nil, err
	}
	d.hostClients = append(d.hostClients, hc)
	log := d.log.Named("bgp")
	sink := BGPRoutes(hc, d.host.Kernel(), info.Name, cfg.BGPProtocol)
	deps := bgp.Deps{
		Speaker: bgp.NewGoBGP(log.Named("gobgp")), Routes: sink, NHRP: engineRef{d},
		Local: &localRoutes{k: d.host.Kernel(), tunnel: info.Index}, Log: log, Audit: log.Named("audit"),
	}
	if c.Role == bgp.RoleSpoke {
		deps.Reregister = d.reregisterLimited()
	}
	return bgp.NewController(c, deps)
}

// runBGP runs the controller until the daemon stops; it stops gracefully
// (the neighbours keep our routes, the kernel keeps theirs).
func (d *Daemon) runBGP(ctx context.Context, c *bgp.Controller) {
	bctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() { done <- c.Run(bctx) }()
	d.mu.Lock()
	d.bgp = c
	d.mu.Unlock()
	d.stopFn = append(d.stopFn, func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			return errors.New("BGP did not stop in time")
		}
	})
}

// reregisterLimited asks the engine to register again, at most every few
// seconds (a spoke's sessions to a restarted hub all go down at once).
func (d *Daemon) reregisterLimited() func(string) {
	var mu sync.Mutex
	var last time.Time
	return func(reason string) {
		mu.Lock()
		if time.Since(last) < 5*time.Second {
			mu.Unlock()
			return
		}
		last = time.Now()
		mu.Unlock()
		eng := d.Engine()
		if eng == nil {
			return
		}
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := eng.Reregister(ctx, reason); err != nil {
				d.log.Debug("re-registering after a BGP session loss", zap.Error(err))
			}
		}()
	}
}

// engineRef reads the engine the daemon runs (made after the controller).
type engineRef struct{ d *Daemon }

var errNoEngine = errors.New("the NHRP engine is not running")

func (r engineRef) Cache(ctx context.Context) ([]nhrp.CacheEntry, error) {
	if e := r.d.Engine(); e != nil {
		return e.Cache(ctx)
	}
	return nil, errNoEngine
}

func (r engineRef) Lookup(ctx context.Context, p netip.Prefix) (nhrp.CacheEntry, bool, error) {
	if e := r.d.Engine(); e != nil {
		return e.Lookup(ctx, p)
	}
	return nhrp.CacheEntry{}, false, errNoEngine
}

func (r engineRef) NHS(ctx context.Context) ([]nhrp.NHSStatus, error) {
	if e := r.d.Engine(); e != nil {
		return e.NHS(ctx)
	}
	return nil, errNoEngine
}

// BGPMetric is the metric of BGP's routes in the kernel, zebra's for
// eBGP: host/ keys a route by table, destination and metric, so at
// metric 0 a BGP route for a prefix the node has connected or static
// (both metric 0) replaced it; at 20 both stay and the kernel prefers the
// node's own.
const BGPMetric = 20

// BGPRoutes is the route sink dmvpnd gives its BGP controller: the routes
// in the main table at BGPMetric, each next hop on-link through the
// tunnel device dev, applied through host's client c; a previous run's
// routes are those of protocol in k.
func BGPRoutes(c *host.Client, k host.Kernel, dev string, protocol int) bgp.RouteSink {
	return &hostRoutes{c: c, k: k, dev: dev, protocol: protocol}
}

// hostRoutes is BGP's route sink (BGPRoutes).
type hostRoutes struct {
	c        *host.Client
	k        host.Kernel
	dev      string
	protocol int
}

func (h *hostRoutes) SetRoutes(ctx context.Context, rs []bgp.KernelRoute) error {
	cfg := &host.Config{Routes: make([]host.Route, 0, len(rs))}
	for _, r := range rs {
		hr := host.Route{Table: host.Main, Dst: r.Dst, Metric: BGPMetric}
		for _, nh := range r.NextHops {
			hr.NextHops = append(hr.NextHops, host.NextHop{Gw: nh, Dev: h.dev, Onlink: true})
		}
		cfg.Routes = append(cfg.Routes, hr)
	}
	return h.c.Set(ctx, cfg)
}

func (h *hostRoutes) Routes(ctx context.Context) ([]bgp.KernelRoute, error) {
	rs, err := h.k.Routes(ctx, host.IPv4, h.protocol)
	if err != nil {
		return nil, err
	}
	var out []bgp.KernelRoute
	for _, r := range rs {
		if r.Table != host.Main && r.Table != 0 {
			continue
		}
		kr := bgp.KernelRoute{Dst: r.Dst}
		for _, nh := range r.NextHops {
			if nh.Gw.IsValid() {
				kr.NextHops = append(kr.NextHops, nh.Gw)
			}
		}
		out = append(out, kr)
	}
	return out, nil
}

// localRoutes lists the node's connected and static routes that do not go
// through the tunnel, for redistribution.
type localRoutes struct {
	k      host.Kernel
	tunnel int
}

// Route protocols of the kernel's own routes.
var redistProtocols = map[string][]int{"connected": {2}, "static": {3, 4}}

func (l *localRoutes) LocalRoutes(ctx context.Context, kinds []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	var errs []error
	for _, k := range kinds {
		for _, proto := range redistProtocols[k] {
			rs, err := l.k.Routes(ctx, host.IPv4, proto)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			for _, r := range rs {
				if (r.Table != host.Main && r.Table != 0) || r.Type != host.Unicast || viaIndex(r, l.tunnel) {
					continue
				}
				if !slices.Contains(out, r.Dst) {
					out = append(out, r.Dst)
				}
			}
		}
	}
	return out, errors.Join(errs...)
}

func viaIndex(r host.Route, idx int) bool {
	for _, nh := range r.NextHops {
		if nh.Index == idx {
			return true
		}
	}
	return false
}
