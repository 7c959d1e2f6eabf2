package daemon

import (
	"context"
	"fmt"
	"reflect"
	"sync/atomic"

	"github.com/opendmvpn/dmvpn/nhrp"
	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// policyAuthorizer is the registration policy until IPsec certificates
// decide: allow every client, or only the listed tunnel addresses. A
// refusal is administratively prohibited (CIE code 4).
//
// The allow list is read through cur, so a reload changes it live.
func policyAuthorizer(p Policy, cur *atomic.Pointer[Policy]) nhrp.Authorizer {
	if p.AllowAll || len(p.Allow) == 0 {
		return nil // the engine accepts everything without a hook
	}
	return nhrp.AuthorizerFunc(func(ctx context.Context, r nhrp.Registration) nhrp.Verdict {
		for _, a := range cur.Load().Allow {
			if a.Contains(r.Proto.Addr()) && a.Bits() <= r.Proto.Bits() {
				return nhrp.Verdict{}
			}
		}
		return nhrp.Verdict{Code: uint8(wire.CIEAdminProhibited), Reason: fmt.Sprintf("%s is not in the allow list", r.Proto)}
	})
}

// diff lists what changed between two configurations: changes applied
// live, and restart, the ones that need the daemon restarted.
func diff(old, cfg Config) (changes, restart []string) {
	if old.Tunnel.Name != cfg.Tunnel.Name {
		restart = append(restart, "tunnel interface name")
	}
	if old.Tunnel.Key != cfg.Tunnel.Key {
		restart = append(restart, "GRE key")
	}
	if old.Tunnel.Prefix != cfg.Tunnel.Prefix {
		restart = append(restart, "tunnel address")
	}
	if old.Tunnel.MTU != cfg.Tunnel.MTU || old.Tunnel.Local != cfg.Tunnel.Local || old.Tunnel.TTL != cfg.Tunnel.TTL {
		restart = append(restart, "tunnel MTU, source or TTL")
	}
	if old.Dataplane != cfg.Dataplane {
		restart = append(restart, "data plane")
	}
	if old.NHRP.Role != cfg.NHRP.Role {
		restart = append(restart, "role")
	}
	if old.RedirectGroup != cfg.RedirectGroup || old.ShortcutRulePriority != cfg.ShortcutRulePriority ||
		old.NHRP.Redirect != cfg.NHRP.Redirect || old.NHRP.Shortcut != cfg.NHRP.Shortcut ||
		old.NHRP.ShortcutTable != cfg.NHRP.ShortcutTable {
		restart = append(restart, "redirect or shortcut switches, table or rule")
	}
	if old.Node != cfg.Node {
		changes = append(changes, fmt.Sprintf("node name %q → %q", old.Node, cfg.Node))
	}
	if !reflect.DeepEqual(old.NHRP.NHS, cfg.NHRP.NHS) {
		changes = append(changes, fmt.Sprintf("next hop servers: %v → %v", old.NHRP.NHS, cfg.NHRP.NHS))
	}
	if !reflect.DeepEqual(old.NHRP.StaticMaps, cfg.NHRP.StaticMaps) {
		changes = append(changes, "static maps")
	}
	if old.NHRP.HoldingTime != cfg.NHRP.HoldingTime {
		changes = append(changes, fmt.Sprintf("holding time %v → %v", old.NHRP.HoldingTime, cfg.NHRP.HoldingTime))
	}
	if string(old.NHRP.AuthPassword) != string(cfg.NHRP.AuthPassword) {
		changes = append(changes, "authentication")
	}
	o, n := old.NHRP, cfg.NHRP
	o.NHS, n.NHS, o.StaticMaps, n.StaticMaps, o.HoldingTime, n.HoldingTime, o.AuthPassword, n.AuthPassword = nil, nil, nil, nil, 0, 0, nil, nil
	if !reflect.DeepEqual(o, n) {
		changes = append(changes, "NHRP settings")
	}
	if !reflect.DeepEqual(old.IPsec, cfg.IPsec) {
		restart = append(restart, "ipsec (credential files are reloaded when they change)")
	}
	if !reflect.DeepEqual(old.Networks, cfg.Networks) {
		changes = append(changes, "networks")
	}
	if !reflect.DeepEqual(old.Policy, cfg.Policy) {
		oldAll := old.Policy.AllowAll || len(old.Policy.Allow) == 0
		newAll := cfg.Policy.AllowAll || len(cfg.Policy.Allow) == 0
		if oldAll != newAll {
			restart = append(restart, "registration policy (allow all ↔ allow list)")
		} else {
			changes = append(changes, "registration policy")
		}
	}
	return changes, restart
}
