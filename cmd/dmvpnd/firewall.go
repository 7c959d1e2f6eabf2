package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/opendmvpn/dmvpn/daemon/config"
	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/firewall"
)

// firewallNode is the daemon's firewall as the App needs it;
// daemonNode implements it.
type firewallNode interface {
	Firewall() *firewall.Manager
	ApplyFirewall(ctx context.Context, fw *firewall.Config, src any, confirm time.Duration) (firewall.Result, error)
}

// Firewall returns the daemon's firewall manager (nil without one).
func (n daemonNode) Firewall() *firewall.Manager { return n.d.Firewall() }

// ApplyFirewall applies a firewall configuration through the daemon.
func (n daemonNode) ApplyFirewall(ctx context.Context, fw *firewall.Config, src any, confirm time.Duration) (firewall.Result, error) {
	return n.d.ApplyFirewall(ctx, fw, src, confirm)
}

// Firewall implements control.FirewallSource: nil when the node runs
// without a firewall.
func (a *App) Firewall() control.Firewall {
	fn, ok := a.node.(firewallNode)
	if !ok || fn.Firewall() == nil {
		return nil
	}
	return appFirewall{a: a, n: fn}
}

// appFirewall is the App's firewall: the file's section applied,
// confirmed and translated, the running configuration following it.
type appFirewall struct {
	a *App
	n firewallNode
}

// Status implements control.Firewall.
func (f appFirewall) Status(ctx context.Context) firewall.Status { return f.n.Firewall().Status(ctx) }

// Confirm implements control.Firewall.
func (f appFirewall) Confirm() error { return f.n.Firewall().Confirm() }

// Apply implements control.Firewall: the configuration file is read and
// checked whole, its firewall section put in force (and into the running
// configuration); the rest of the file is left to reload.
func (f appFirewall) Apply(ctx context.Context, confirm time.Duration) (control.FirewallApplyResponse, error) {
	a := f.a
	a.mu.Lock()
	defer a.mu.Unlock()
	nc, err := a.load(a.path)
	if err != nil {
		return control.FirewallApplyResponse{}, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	res, err := f.n.ApplyFirewall(ctx, nc.FirewallPolicy(), nc.Firewall, confirm)
	if err != nil {
		return control.FirewallApplyResponse{}, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	old := a.cfg.Load()
	running := *old
	running.Firewall = nc.Firewall
	a.cfg.Store(&running)
	out := control.FirewallApplyResponse{Result: res}
	other := *nc
	other.Firewall, other.Warnings = old.Firewall, old.Warnings
	if !bytes.Equal(other.YAML(), old.YAML()) {
		out.Ignored = append(out.Ignored, "other sections of the file differ from the running configuration")
	}
	return out, nil
}

// Translate implements control.Firewall.
func (f appFirewall) Translate(ctx context.Context, running bool) (string, error) {
	var fw *config.Firewall
	if running {
		fw = f.a.cfg.Load().Firewall
	} else {
		nc, err := f.a.load(f.a.path)
		if err != nil {
			return "", err
		}
		fw = nc.Firewall
	}
	if fw == nil {
		return "", errors.New("the file has no firewall section")
	}
	rs, err := f.n.Firewall().Translate(*fw.FirewallConfig())
	if err != nil {
		return "", err
	}
	return rs.Text(), nil
}

// firewallRolledBack follows a firewall rollback: the running
// configuration takes back the section in force again — src, the file's
// section an apply put in force, or nil for the section the node started
// or was last reloaded with.
func (a *App) firewallRolledBack(src any) {
	fw, _ := src.(*config.Firewall)
	if fw == nil {
		fw = a.fwBase.Load()
	}
	old := a.cfg.Load()
	running := *old
	running.Firewall = fw
	a.cfg.Store(&running)
	a.log.Warn("firewall apply not confirmed: the previous policy and its configuration are back")
}
