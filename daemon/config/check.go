package config

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"github.com/opendmvpn/dmvpn/gre/backend"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// defaults fills what the file left out. Settings whose default depends
// on the role (phase 3 switches, multicast) follow it.
func (c *Config) defaults(d *decoder) {
	t := &c.Tunnel
	hub := c.Role == "hub"
	if !d.has("tunnel.dataplane") {
		t.Dataplane = backend.Auto
	}
	if !d.has("tunnel.holding_time") {
		t.HoldingTime = nhrp.DefaultHoldingTime
	}
	if !d.has("tunnel.redirect") {
		t.Redirect = hub
	}
	if !d.has("tunnel.shortcut") {
		t.Shortcut = !hub
	}
	if !d.has("tunnel.shortcut_table") {
		t.ShortcutTable = nhrp.DefaultShortcutTable
	}
	if !d.has("tunnel.shortcut_protocol") {
		t.ShortcutProtocol = nhrp.DefaultShortcutProto
	}
	if !d.has("tunnel.shortcut_rule_priority") {
		t.ShortcutRulePriority = 1000
	}
	if !d.has("tunnel.multicast") {
		t.Multicast = "nhs"
		if hub {
			t.Multicast = "dynamic"
		}
	}
	if !d.has("tunnel.purge_on_shutdown") {
		t.PurgeOnShutdown = true
	}
	if !d.has("tunnel.redirect_group") {
		t.RedirectGroup = 1
	}
	if hub && !d.has("policy.allow") && t.Address.IsValid() {
		// Secure by default: the tunnel network, not everything.
		c.Policy.Allow = []netip.Prefix{t.Address.Masked()}
	}
	if !d.has("forwarding") {
		c.Forwarding = true
	}
	if c.Logging.Level == "" {
		c.Logging.Level = DefaultLogLevel
	}
	if c.Logging.Format == "" {
		c.Logging.Format = DefaultLogFormat
	}
	if !d.has("metrics.enabled") {
		c.Metrics.Enabled = true
	}
	if c.Metrics.Listen == "" {
		c.Metrics.Listen = DefaultMetricsListen
	}
	if c.Control.Socket == "" {
		c.Control.Socket = DefaultSocket
	}
	if c.Control.Group == "" {
		c.Control.GID = -1
	}
	if t.StateFile == "" && t.Interface != "" {
		// Beside the control socket, named after it: unique per node
		// wherever several share a directory.
		t.StateFile = strings.TrimSuffix(c.Control.Socket, filepath.Ext(c.Control.Socket)) + "." + t.Interface + ".state"
	}
}

// check reports missing and contradictory settings.
func (c *Config) check(d *decoder) {
	if !d.has("node") {
		d.errorAt("node", "missing (the node's name)")
	} else if !validName(c.Node) {
		d.errorAt("node", "%q: use 1-63 letters, digits, '.', '_' or '-'", c.Node)
	}
	if !d.has("role") {
		d.errorAt("role", "missing (hub or spoke)")
	}
	if !d.has("tunnel") {
		d.errorAt("tunnel", "missing")
		return
	}
	t := &c.Tunnel
	if !d.has("tunnel.interface") {
		d.errorAt("tunnel.interface", "missing (the tunnel interface name)")
	}
	if !d.has("tunnel.address") {
		d.errorAt("tunnel.address", "missing (the tunnel address with its prefix length, like 172.16.1.1/16)")
	} else if t.Address.IsValid() && t.Address.Bits() == t.Address.Addr().BitLen() && t.Address.Addr().Is4() {
		d.errorAt("tunnel.address", "%s: give the tunnel network's prefix length (a /32 leaves no room for peers)", t.Address)
	}
	if t.Source.IsValid() && !t.Source.Is4() {
		d.errorAt("tunnel.source", "%s: the NBMA network is IPv4", t.Source)
	}
	if d.has("tunnel.registration_interval") && t.RegistrationInterval >= t.HoldingTime {
		d.errorAt("tunnel.registration_interval", "%v must be shorter than the holding time (%v)", t.RegistrationInterval, t.HoldingTime)
	}
	if t.ShortcutTable >= 253 && t.ShortcutTable <= 255 {
		d.errorAt("tunnel.shortcut_table", "%d is a table the kernel reserves (default, main, local)", t.ShortcutTable)
	}
	c.checkNHS(d)
	c.checkMaps(d)
	switch {
	case t.Multicast == "static" && len(t.MulticastNBMA) == 0:
		d.errorAt("tunnel.multicast", "static needs tunnel.multicast_nbma")
	case t.Multicast != "static" && len(t.MulticastNBMA) > 0:
		d.errorAt("tunnel.multicast_nbma", "only used with multicast: static (multicast is %s)", t.Multicast)
	}
	if c.Role == "spoke" {
		if t.Redirect && d.has("tunnel.redirect") {
			d.errorAt("tunnel.redirect", "redirect is a hub setting (role is spoke)")
		}
		if d.has("policy") {
			d.errorAt("policy", "the registration policy is a hub setting (role is spoke)")
		}
		if len(t.NHS) == 0 && d.has("tunnel") {
			d.errorAt("tunnel.nhs", "a spoke needs at least one next hop server")
		}
		if t.Multicast == "dynamic" && d.has("tunnel.multicast") {
			d.errorAt("tunnel.multicast", "dynamic replicates to registered clients: a hub setting (role is spoke)")
		}
	}
	if c.Metrics.Enabled && c.Control.Listen != "" && c.Metrics.Listen == c.Control.Listen {
		d.errorAt("control.listen", "%s is also metrics.listen", c.Control.Listen)
	}
	c.checkControl(d)
	for i, a := range c.Policy.Allow {
		if t.Address.IsValid() && !(t.Address.Masked().Contains(a.Addr()) && t.Address.Bits() <= a.Bits()) {
			d.errorAt(index("policy.allow", i), "%s is outside the tunnel network %s (registrations there are refused whatever the list says)", a, t.Address.Masked())
		}
	}
	for i, n := range c.Networks {
		for _, m := range c.Networks[:i] {
			if m.Overlaps(n) {
				d.errorAt(d.netPaths[i], "%s overlaps %s", n, m)
				break
			}
		}
		if t.Address.IsValid() && n.Overlaps(t.Address.Masked()) {
			d.errorAt(d.netPaths[i], "%s overlaps the tunnel network %s", n, t.Address.Masked())
		}
	}
}

func (c *Config) checkNHS(d *decoder) {
	t := &c.Tunnel
	seen := map[string]int{}
	byAddr := map[netip.Addr]int{}
	for i, n := range t.NHS {
		p := index("tunnel.nhs", i)
		switch {
		case !n.NBMA.IsValid() && n.Host == "" && !d.has(p+".nbma"):
			d.errorAt(p+".nbma", "missing (the server's NBMA address or DNS name)")
		case n.NBMA.IsValid() && !n.NBMA.Is4():
			d.errorAt(p+".nbma", "%s: the NBMA network is IPv4", n.NBMA)
		}
		if n.Address.IsValid() {
			if j, dup := byAddr[n.Address]; dup && (t.NHS[j].NBMA != n.NBMA || t.NHS[j].Host != n.Host) {
				d.errorAt(p+".address", "%s is also tunnel.nhs[%d]'s, at another NBMA address: one server, one NBMA address", n.Address, j)
			}
			byAddr[n.Address] = i
			switch {
			case t.Address.IsValid() && t.Address.Bits() < t.Address.Addr().BitLen() && !t.Address.Masked().Contains(n.Address):
				d.errorAt(p+".address", "%s is outside the tunnel network %s", n.Address, t.Address.Masked())
			case n.Address == t.Address.Addr():
				d.errorAt(p+".address", "%s is this node's own tunnel address", n.Address)
			}
		}
		key := n.Host
		if n.NBMA.IsValid() {
			key = n.NBMA.String()
		}
		if key == "" {
			continue
		}
		if j, dup := seen[key]; dup {
			d.errorAt(p+".nbma", "%s is also tunnel.nhs[%d]", key, j)
		}
		seen[key] = i
	}
	if t.MaxNHS > 0 && len(t.NHS) > 0 && t.MaxNHS > len(t.NHS) && !hasHost(t.NHS) {
		d.errorAt("tunnel.max_nhs", "%d is more than the %d servers listed", t.MaxNHS, len(t.NHS))
	}
}

func hasHost(ns []NHS) bool {
	for _, n := range ns {
		if n.Host != "" {
			return true
		}
	}
	return false
}

func (c *Config) checkMaps(d *decoder) {
	seen := map[netip.Prefix]int{}
	for i, m := range c.Tunnel.StaticMaps {
		p := index("tunnel.static_maps", i)
		if !d.has(p + ".address") {
			d.errorAt(p+".address", "missing")
		}
		if !d.has(p + ".nbma") {
			d.errorAt(p+".nbma", "missing")
		} else if m.NBMA.IsValid() && !m.NBMA.Is4() {
			d.errorAt(p+".nbma", "%s: the NBMA network is IPv4", m.NBMA)
		}
		if !m.Address.IsValid() {
			continue
		}
		if j, dup := seen[m.Address]; dup {
			d.errorAt(p+".address", "%s is also tunnel.static_maps[%d]", m.Address, j)
		}
		seen[m.Address] = i
	}
}

// validName reports whether s is a node name.
func validName(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// durationString prints a duration the way the file takes it: whole
// seconds as a number of seconds.
func durationString(v time.Duration) string {
	if v%time.Second == 0 {
		return fmt.Sprint(int64(v / time.Second))
	}
	return v.String()
}
