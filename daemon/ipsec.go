package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/ipsec"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// Tunnel MTUs with IPsec when the configuration sets none: kernel-libipsec's
// TUN has MTU 1400, less the outer IPv4 and keyed GRE headers; ESP in
// transport mode over a 1500-byte underlay leaves room for 1400 with any
// proposal.
const (
	mtuIPsecUserspace = 1400 - gre.Overhead
	mtuIPsecKernel    = 1400
)

// ipsecMode resolves the configured mode against the data plane: auto
// follows what it answers (kernel ESP with ip_gre, userspace ESP
// otherwise).
func ipsecMode(m ipsec.Mode, info gre.Info) (ipsec.Mode, string) {
	switch m {
	case ipsec.ModeKernel, ipsec.ModeUserspace:
		return m, "as configured"
	}
	if info.Caps.KernelESPByDefault && info.Caps.XfrmESP {
		return ipsec.ModeKernel, "auto: the " + info.Backend + " data plane has kernel ESP (xfrm, transport mode)"
	}
	return ipsec.ModeUserspace, "auto: the " + info.Backend + " data plane uses userspace ESP (kernel-libipsec, tunnel mode)"
}

// protects says why the data plane's GRE would not be protected by ESP
// of the given mode ("" when it is).
func protects(mode ipsec.Mode, info gre.Info) string {
	switch {
	case mode == ipsec.ModeKernel && info.Caps.FastPath:
		return fmt.Sprintf("kernel ESP with the %s data plane: its fast path redirects GRE past the kernel's xfrm, so GRE would leave in clear; use ipsec mode userspace, or the kernel data plane", info.Backend)
	case mode == ipsec.ModeKernel && !info.Caps.XfrmESP:
		return fmt.Sprintf("kernel ESP with the %s data plane: this kernel routes its raw GRE sends as protocol 255 (no IP_PROTOCOL control message, Linux 6.x needed), so the xfrm policies would not apply and GRE would leave in clear; use the kernel data plane", info.Backend)
	case mode == ipsec.ModeUserspace && !info.Caps.RoutedGRE:
		// Without it GRE sent with IP_HDRINCL is routed as protocol 255
		// and the rules that hold GRE back when no SA covers it do not
		// apply: refuse rather than risk GRE in clear.
		return fmt.Sprintf("userspace ESP with the %s data plane: this kernel routes raw GRE sends as protocol 255 (no IP_PROTOCOL control message, Linux 6.x needed), so the rules that keep GRE from leaving in clear would not apply; use the kernel data plane (ipsec mode kernel)", info.Backend)
	}
	return ""
}

// ingressGate is the data plane's ingress check with IPsec: once armed
// (userspace mode), GRE counts only if it came out of charon's TUN.
type ingressGate struct {
	armed  atomic.Bool
	filter *ipsec.IngressFilter
}

func (g *ingressGate) accept(ifindex int) bool {
	return !g.armed.Load() || g.filter.Accept(ifindex)
}

// startIPsec brings IPsec up on an open tunnel: the mode, the tunnel MTU,
// the rules or policies that keep GRE from going in clear, and the
// manager (charon, credentials, connections). It adds its undo steps.
func (d *Daemon) startIPsec(ctx context.Context, cfg Config, dev gre.Device, gate *ingressGate) (*ipsec.Manager, error) {
	info := dev.Info()
	mode, why := ipsecMode(cfg.IPsec.Mode, info)
	d.log.Info("ipsec: "+string(mode)+" ESP", zap.String("why", why))
	if cfg.Tunnel.MTU == 0 {
		mtu := mtuIPsecKernel
		if mode == ipsec.ModeUserspace {
			mtu = mtuIPsecUserspace
		}
		if info.MTU > mtu {
			if l, err := netlink.LinkByIndex(info.Index); err == nil {
				if err := netlink.LinkSetMTU(l, mtu); err != nil {
					d.log.Warn("ipsec: setting the tunnel MTU", zap.Int("mtu", mtu), zap.Error(err))
				}
			}
		}
	}
	if why := protects(mode, info); why != "" {
		return nil, errors.New("ipsec: " + why)
	}
	// The protection of GRE, through the host state's owner: adopted
	// from an earlier run (no instant without it), kept on a stop with
	// --keep-routes, removed on another stop once the tunnel is closed.
	hc, err := ipsec.Protection(mode)
	if err != nil {
		return nil, err
	}
	c, err := d.host.Client(ipsec.ProtectionOwner)
	if err != nil {
		return nil, err
	}
	d.hostClients = append(d.hostClients, c)
	if err := c.Set(ctx, hc); err != nil {
		return nil, err
	}
	if mode == ipsec.ModeUserspace {
		gate.armed.Store(true)
		// The ebpf fast path forwards GRE outside the gate and the
		// rules: it must send only into charon's TUN and drop GRE in
		// clear itself.
		if e, ok := dev.(gre.IPsecEnforcer); ok {
			if err := e.RequireIPsec(gate.filter.Accept); err != nil {
				return nil, fmt.Errorf("ipsec: the data plane's fast path: %w", err)
			}
		}
	}
	hooks := ipsec.Hooks{
		PeerLost: func(nbma netip.Addr, reason string) {
			if e := d.Engine(); e != nil {
				c, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				e.PeerLost(c, nbma, reason)
			}
		},
		Revoked: func(nbma netip.Addr, reason string) {
			if e := d.Engine(); e != nil {
				c, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				e.Revoke(c, nbma, reason)
			}
		},
		Restarted: func(reason string) {
			// charon's TUN may have another name now (ipsec1).
			fctx, fcancel := context.WithTimeout(context.Background(), 10*time.Second)
			if err := d.refreshFirewall(fctx, 5*time.Second); err != nil {
				d.log.Error("firewall: following charon's restart", zap.Error(err))
			}
			fcancel()
			if e := d.Engine(); e != nil {
				c, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				e.Reregister(c, reason)
			}
		},
	}
	if a, ok := dev.(gre.PeerAliaser); ok && mode == ipsec.ModeUserspace {
		hooks.Aliases = a.SetPeerAliases
	}
	m, err := ipsec.New(*cfg.IPsec, mode, cfg.NHRP.Role == nhrp.RoleHub, d.log.Named("ipsec"), hooks)
	if err != nil {
		return nil, err
	}
	// Its registration decision lines and the refused packets' share one
	// budget, and the daemon writes the summary of what both held back.
	m.LimitAuditWith(d.refusalLimiter())
	// With uplinks, the connections initiate from the active uplink's
	// address from the start, not from %any: with balanced uplinks the
	// kernel's multipath pick would be charon's source while GRE is sent
	// out the active uplink's table (the follower moves it later).
	if mon := d.Uplinks(); mon != nil {
		if nbma := mon.NBMA(); len(nbma) > 0 {
			m.SetLocal(nbma[0])
		}
	}
	mctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	if err := m.Start(mctx); err != nil {
		cancel()
		return nil, err
	}
	d.stopFn = append(d.stopFn, func() error {
		cancel()
		select {
		case <-m.Done():
		case <-time.After(10 * time.Second):
		}
		return nil
	})
	return m, nil
}

// IPsec returns the IPsec manager, nil when IPsec is off.
func (d *Daemon) IPsec() *ipsec.Manager {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ipsecMgr
}

// bothAuthorizers accepts a registration only if the policy and the
// certificate both do.
func bothAuthorizers(policy nhrp.ImmediateAuthorizer, cert nhrp.Authorizer) nhrp.Authorizer {
	if policy == nil {
		return cert
	}
	return both{policy, cert}
}

// both asks the policy, then the certificate. What the policy refuses is
// decided at once (an nhrp.ImmediateAuthorizer); the certificate check may
// block (VICI).
type both struct {
	policy nhrp.ImmediateAuthorizer
	cert   nhrp.Authorizer
}

// Authorize implements nhrp.Authorizer.
func (b both) Authorize(ctx context.Context, r nhrp.Registration) nhrp.Verdict {
	if v := b.policy.Authorize(ctx, r); v.Code != 0 {
		return v
	}
	return b.cert.Authorize(ctx, r)
}

// AuthorizeNow implements nhrp.ImmediateAuthorizer: a policy refusal is
// final at once; an acceptance waits for the certificate.
func (b both) AuthorizeNow(r nhrp.Registration) (nhrp.Verdict, bool) {
	if v, ok := b.policy.AuthorizeNow(r); ok && v.Code != 0 {
		return v, true
	}
	return nhrp.Verdict{}, false
}
