package nhrp

import (
	"context"
	"net/netip"
	"slices"
	"time"

	"go.uber.org/zap"
)

// dnsRetry is how soon a failed NHS name lookup is retried.
const dnsRetry = 5 * time.Second

// dnsName is an NHS given by a DNS name: each of its A/AAAA records is a
// server, re-resolved every DNSRefresh.
type dnsName struct {
	cfg   NHSConfig
	addrs []netip.Addr
	timer *timer
}

func (e *Engine) addDNSName(c NHSConfig) {
	d := &dnsName{cfg: c}
	e.dns[c.Hostname] = d
	e.resolveName(d)
}

// resolveName looks the name up in a hook goroutine and applies the
// answer on the loop.
func (e *Engine) resolveName(d *dnsName) {
	network := "ip4"
	if e.own.Is6() {
		network = "ip"
	}
	host := d.cfg.Hostname
	if !e.goHook(5*time.Second, func(ctx context.Context) func() {
		addrs, err := e.deps.Resolver.LookupNetIP(ctx, network, host)
		return func() { e.nameResolved(d, addrs, err) }
	}) {
		e.nameResolved(d, nil, errHooksBusy)
	}
}

func (e *Engine) nameResolved(d *dnsName, addrs []netip.Addr, err error) {
	if e.dns[d.cfg.Hostname] != d || e.stopping {
		return
	}
	next := e.cfg.DNSRefresh
	if err != nil {
		e.log.Warn("resolving next hop server name", zap.String("name", d.cfg.Hostname), zap.Error(err))
		next = dnsRetry
	} else {
		var got []netip.Addr
		own := e.localNBMA(netip.Addr{})
		for _, a := range addrs {
			a = a.Unmap()
			if a != own && !slices.Contains(got, a) {
				got = append(got, a)
			}
		}
		slices.SortFunc(got, netip.Addr.Compare)
		for _, a := range got {
			if !slices.Contains(d.addrs, a) {
				e.log.Info("next hop server from DNS", zap.String("name", d.cfg.Hostname), zap.Stringer("nbma", a))
				e.addNHS(d.cfg, a, d.cfg.Hostname)
			}
		}
		for _, a := range d.addrs {
			if !slices.Contains(got, a) {
				if n := e.nhsByNBMA(a); n != nil && n.host == d.cfg.Hostname {
					e.log.Info("next hop server gone from DNS", zap.String("name", d.cfg.Hostname), zap.Stringer("nbma", a))
					e.removeNHS(n, "gone from DNS")
				}
			}
		}
		d.addrs = got
		e.selectNHS()
	}
	d.timer.Stop()
	d.timer = e.sched.after(e.now, next, func() { e.resolveName(d) })
}
