package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"reflect"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/firewall"
	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/host"
	"github.com/opendmvpn/dmvpn/ipsec"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// WithFirewallRollback sets the function told, after an unconfirmed
// firewall apply rolled back, the source the configuration in force again
// was applied with (ApplyFirewall's src; nil when the node started with
// it).
func WithFirewallRollback(fn func(src any)) Option {
	return func(d *Daemon) { d.fwRollback = fn }
}

// fwSource is what the daemon applies a firewall configuration with: the
// configuration itself (kept in d.cfg) and the caller's source.
type fwSource struct {
	cfg *firewall.Config
	src any
}

// Firewall returns the firewall's manager, nil when the node runs
// without a firewall (Config.Firewall nil) or before Ready.
func (d *Daemon) Firewall() *firewall.Manager {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.fw
}

// startFirewall puts the nftables policy in force, through the firewall's
// own host client, before IPsec and the engine start: from the first
// packet, GRE is accepted only under IPsec. In userspace mode charon's TUN
// is not known yet, so no GRE at all until refreshFirewall finds it.
func (d *Daemon) startFirewall(ctx context.Context, cfg Config, info gre.Info) error {
	if cfg.Firewall == nil {
		d.log.Warn("no firewall: the node runs without its nftables policy")
		return nil
	}
	if cfg.Firewall.Baseline {
		d.log.Warn("no firewall section: only the baseline policy runs (GRE only under IPsec, BGP only on the tunnel)")
	}
	c, err := d.host.Client(firewall.Owner())
	if err != nil {
		return err
	}
	d.hostClients = append(d.hostClients, c)
	m := firewall.NewManager(firewall.NewHostTable(c), d.firewallFacts(cfg, info, ""), d.log.Named("firewall"),
		firewall.WithRollback(d.firewallRolledBack))
	res, err := m.Apply(ctx, *cfg.Firewall, fwSource{cfg: cfg.Firewall}, 0)
	if err != nil {
		return err
	}
	d.log.Info("firewall in force", zap.Int("rules", res.Rules), zap.Duration("took", res.Took))
	d.mu.Lock()
	d.fw = m
	d.mu.Unlock()
	d.stopFn = append(d.stopFn, func() error { m.Stop(); return nil })
	return nil
}

// firewallFacts are the node's facts the policy is built with.
func (d *Daemon) firewallFacts(cfg Config, info gre.Info, tun string) firewall.Facts {
	f := firewall.Facts{Tunnel: info.Name, TunnelMTU: info.MTU, Hub: cfg.NHRP.Role == nhrp.RoleHub,
		IPsecTUN: tun, ManagementPorts: cfg.ManagementPorts}
	if l, err := net.InterfaceByIndex(info.Index); err == nil {
		f.TunnelMTU = l.MTU // IPsec may have lowered it since the device opened
	}
	if cfg.IPsec != nil {
		mode, _ := ipsecMode(cfg.IPsec.Mode, info)
		f.IPsec = firewall.IPsecMode(mode)
	}
	if cfg.Uplinks != nil {
		f.Uplinks = firewallUplinks(*cfg.Uplinks)
	}
	return f
}

// refreshFirewall rebuilds the policy for the node's facts now: the
// tunnel's MTU and, in userspace mode, charon's TUN (looked for up to
// wait: charon creates it as it starts).
func (d *Daemon) refreshFirewall(ctx context.Context, wait time.Duration) error {
	m, dev, mgr := d.Firewall(), d.Device(), d.IPsec()
	if m == nil || dev == nil {
		return nil
	}
	cfg := d.Config()
	tun := ""
	if mgr != nil && mgr.Mode() == ipsec.ModeUserspace {
		deadline := time.Now().Add(wait)
		for {
			var err error
			if tun, err = mgr.TUN(); err == nil {
				break
			}
			if time.Now().After(deadline) {
				d.log.Warn("firewall: charon's TUN not found: no GRE is accepted until it is", zap.Error(err))
				break
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	f := d.firewallFacts(cfg, dev.Info(), tun)
	if reflect.DeepEqual(m.Facts(), f) {
		return nil
	}
	if err := m.SetFacts(ctx, f); err != nil {
		return fmt.Errorf("firewall: %w", err)
	}
	d.log.Info("firewall rebuilt for the node", zap.String("ipsec_tun", tun), zap.Int("tunnel_mtu", f.TunnelMTU))
	return nil
}

// ApplyFirewall puts a firewall configuration in force (awall's
// activate); with confirm > 0 the previous one comes back unless
// ConfirmFirewall is called in time, and WithFirewallRollback's function
// gets src back. A refused configuration changes nothing.
func (d *Daemon) ApplyFirewall(ctx context.Context, fw *firewall.Config, src any, confirm time.Duration) (firewall.Result, error) {
	m := d.Firewall()
	if m == nil {
		return firewall.Result{}, errors.New("the firewall is off on this node: starting it needs a restart")
	}
	if fw == nil {
		return firewall.Result{}, errors.New("no firewall section: turning the firewall off needs a restart")
	}
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	res, err := m.Apply(ctx, *fw, fwSource{cfg: fw, src: src}, confirm)
	if err != nil {
		return res, err
	}
	d.mu.Lock()
	d.cfg.Firewall = fw
	d.mu.Unlock()
	return res, nil
}

// firewallRolledBack follows a rollback: the configuration in force is the
// previous one again.
func (d *Daemon) firewallRolledBack(src any) {
	s, _ := src.(fwSource)
	d.mu.Lock()
	if s.cfg != nil {
		d.cfg.Firewall = s.cfg
	}
	fn := d.fwRollback
	d.mu.Unlock()
	if fn != nil {
		fn(s.src)
	}
}

// firewallStep is the reload's firewall step: the new section, management
// ports and uplinks (interfaces, marks, masquerade) put in force, the old
// ones back on undo (nil when none changed or the node runs without a
// firewall).
func (d *Daemon) firewallStep(old, cfg Config) *step {
	m := d.Firewall()
	if m == nil || reflect.DeepEqual(old.Firewall, cfg.Firewall) && slices.Equal(old.ManagementPorts, cfg.ManagementPorts) &&
		reflect.DeepEqual(old.Uplinks, cfg.Uplinks) {
		return nil
	}
	put := func(ctx context.Context, c Config) error {
		f := m.Facts()
		f.ManagementPorts = c.ManagementPorts
		if c.Uplinks != nil {
			f.Uplinks = firewallUplinks(*c.Uplinks)
		}
		if !reflect.DeepEqual(m.Facts(), f) {
			if err := m.SetFacts(ctx, f); err != nil {
				return err
			}
		}
		if reflect.DeepEqual(old.Firewall, cfg.Firewall) {
			return nil
		}
		_, err := m.Apply(ctx, *c.Firewall, fwSource{cfg: c.Firewall}, 0)
		return err
	}
	return &step{
		name: "putting the firewall in force",
		do:   func(ctx context.Context) error { return put(ctx, cfg) },
		undo: func(ctx context.Context) error { return put(ctx, old) },
	}
}

// redirectTable is the redirect rule's table as its host client keeps it.
type redirectTable struct {
	c  *host.Client
	id host.TableID
}

// Replace implements redirect.TableOwner.
func (r redirectTable) Replace(ctx context.Context, build host.NFTBuilder) error {
	return r.c.Set(ctx, &host.Config{Tables: []host.NFTable{{TableID: r.id, Build: build}}})
}

// Remove implements redirect.TableOwner.
func (r redirectTable) Remove(ctx context.Context) error { return r.c.Set(ctx, &host.Config{}) }
