package daemon

import (
	"context"
	"fmt"
	"github.com/opendmvpn/dmvpn/failover"
	"net/netip"
	"reflect"
	"slices"
	"sync/atomic"

	"github.com/opendmvpn/dmvpn/nhrp"
	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// policyAuthorizer is the hub's registration policy, before (and beside)
// the IPsec certificate check. It refuses, with administratively
// prohibited (CIE code 4):
//   - a CIE whose address or prefix lies outside the tunnel network
//     (tunnel is the tunnel address with its prefix length), whatever the
//     allow list says: a binding there would route a LAN or the underlay
//     into the tunnel;
//   - a prefix (more than one address) unless the policy allows prefixes:
//     registration() is a longest-prefix lookup, so a client registering
//     a /24 would own every unregistered tunnel address in it;
//   - a tunnel address outside the allow list, unless it allows all. An
//     empty list (the default) is the tunnel network.
//
// The allow list is read through cur, so a reload changes it live.
//
// It never blocks, so it is an nhrp.ImmediateAuthorizer: the engine
// answers on its own goroutine.
func policyAuthorizer(tunnel netip.Prefix, cur *atomic.Pointer[Policy], audit func(nhrp.Registration, string)) nhrp.ImmediateAuthorizer {
	network := tunnel.Masked()
	return immediate(func(r nhrp.Registration) nhrp.Verdict {
		refuse := func(reason string) nhrp.Verdict {
			if audit != nil {
				audit(r, reason)
			}
			return nhrp.Verdict{Code: uint8(wire.CIEAdminProhibited), Reason: reason}
		}
		if !inside(network, r.Proto) {
			return refuse(fmt.Sprintf("%s is outside the tunnel network %s", r.Proto, network))
		}
		p := cur.Load()
		if !r.Proto.IsSingleIP() && !p.Prefixes {
			return refuse(fmt.Sprintf("%s is a prefix, not a host address (policy.prefixes is off)", r.Proto))
		}
		if p.AllowAll {
			return nhrp.Verdict{}
		}
		allow := p.Allow
		if len(allow) == 0 {
			allow = []netip.Prefix{network}
		}
		for _, a := range allow {
			if inside(a, r.Proto) {
				return nhrp.Verdict{}
			}
		}
		return refuse(fmt.Sprintf("%s is not in the allow list", r.Proto))
	})
}

// immediate is an authorizer that never blocks.
type immediate func(r nhrp.Registration) nhrp.Verdict

// Authorize implements nhrp.Authorizer.
func (f immediate) Authorize(_ context.Context, r nhrp.Registration) nhrp.Verdict { return f(r) }

// AuthorizeNow implements nhrp.ImmediateAuthorizer.
func (f immediate) AuthorizeNow(r nhrp.Registration) (nhrp.Verdict, bool) { return f(r), true }

// inside reports whether prefix p lies within network n.
func inside(n, p netip.Prefix) bool {
	return p.IsValid() && n.Contains(p.Addr()) && n.Bits() <= p.Bits()
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
	if old.StateFile != cfg.StateFile {
		restart = append(restart, "state file")
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
	if old.HostStateFile != cfg.HostStateFile {
		restart = append(restart, "host state file")
	}
	if !reflect.DeepEqual(old.BGP, cfg.BGP) || (old.BGP != nil && old.BGPProtocol != cfg.BGPProtocol) {
		// The speaker, its neighbours and its sessions are set up at
		// start only (bgp.Controller has no reconfigure).
		restart = append(restart, "bgp")
	}
	if old.Forwarding != cfg.Forwarding {
		changes = append(changes, fmt.Sprintf("forwarding %s → %s", onOff(old.Forwarding), onOff(cfg.Forwarding)))
	}
	if !reflect.DeepEqual(old.IPsec, cfg.IPsec) || old.IPsecOff != cfg.IPsecOff {
		restart = append(restart, "ipsec (credential files are reloaded when they change)")
	}
	switch {
	case (old.Firewall == nil) != (cfg.Firewall == nil):
		restart = append(restart, "firewall on or off")
	case !reflect.DeepEqual(old.Firewall, cfg.Firewall):
		changes = append(changes, "firewall")
	}
	if !slices.Equal(old.ManagementPorts, cfg.ManagementPorts) {
		changes = append(changes, "management ports")
	}
	switch {
	case (old.Uplinks == nil) != (cfg.Uplinks == nil):
		restart = append(restart, "uplinks on or off")
	case old.Uplinks != nil && !reflect.DeepEqual(*old.Uplinks, *cfg.Uplinks):
		o, n := old.Uplinks.WithDefaults(), cfg.Uplinks.WithDefaults()
		if o.RulePriority != n.RulePriority || o.Protocol != n.Protocol || o.MarkMask != n.MarkMask {
			restart = append(restart, "uplinks' rule priority, route protocol or mark mask")
		} else {
			changes = append(changes, uplinkChanges(o, n)...)
		}
	}
	if !reflect.DeepEqual(old.Networks, cfg.Networks) {
		changes = append(changes, "networks")
	}
	if !reflect.DeepEqual(old.Policy, cfg.Policy) {
		changes = append(changes, "registration policy")
	}
	return changes, restart
}

// onOff words a switch.
func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// uplinkChanges words the changes between two uplink configurations
// (defaults filled in), one per uplink added, removed or changed.
func uplinkChanges(old, cfg failover.Config) []string {
	var out []string
	was := map[string]failover.Uplink{}
	for _, u := range old.Uplinks {
		was[u.Name] = u
	}
	for _, u := range cfg.Uplinks {
		o, ok := was[u.Name]
		delete(was, u.Name)
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("uplink %s on %s added", u.Name, u.Interface))
		case o.Interface != u.Interface:
			out = append(out, fmt.Sprintf("uplink %s moved from %s to %s", u.Name, o.Interface, u.Interface))
		case !reflect.DeepEqual(o, u):
			out = append(out, fmt.Sprintf("uplink %s changed", u.Name))
		}
	}
	for _, u := range old.Uplinks {
		if _, ok := was[u.Name]; ok {
			out = append(out, fmt.Sprintf("uplink %s on %s removed", u.Name, u.Interface))
		}
	}
	if len(out) == 0 {
		out = append(out, "uplinks' order")
	}
	return out
}
