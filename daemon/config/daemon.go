package config

import (
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/opendmvpn/dmvpn/daemon"
	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/ipsec"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// Runtime are the settings that come from the command line rather than the
// file.
type Runtime struct {
	// KeepRoutes leaves routes and neighbour entries in the kernel when the
	// daemon stops (a quick restart adopts them).
	KeepRoutes bool
	// UncheckedCredentials (dmvpnd --unchecked-credentials) loads
	// credential files whose certificate checks fail, at start and when
	// they are read again (the file watch, a reload).
	UncheckedCredentials bool
}

// Daemon returns the daemon's configuration.
func (c *Config) Daemon(rt Runtime) daemon.Config {
	t := &c.Tunnel
	sec := c.IPsec.ipsecConfig()
	defaultDPD(sec, c.Role)
	if sec != nil {
		sec.Tunnel, sec.UncheckedCredentials = t.Address.Addr(), rt.UncheckedCredentials
	}
	c.Limits.applyIPsec(sec)
	n := nhrp.Config{
		HoldingTime:            t.HoldingTime,
		RegistrationInterval:   t.RegistrationInterval,
		MaxRegistrationHolding: t.MaxRegistrationHolding,
		NoUnique:               t.NoUnique,
		MaxNHS:                 t.MaxNHS,
		Redirect:               t.Redirect,
		Shortcut:               t.Shortcut,
		ShortcutTable:          t.ShortcutTable,
		ShortcutProtocol:       t.ShortcutProtocol,
		ShortcutIdle:           t.ShortcutIdle,
		PurgeOnShutdown:        t.PurgeOnShutdown,
		KeepKernelState:        rt.KeepRoutes,
		MaxSend:                t.MaxSend,
		Limits:                 c.Limits.nhrpLimits(),
	}
	if c.Role == "hub" {
		n.Role = nhrp.RoleHub
	}
	if t.Authentication != "" {
		n.AuthPassword = []byte(t.Authentication)
	}
	for _, s := range t.NHS {
		n.NHS = append(n.NHS, nhrp.NHSConfig{Proto: s.Address, NBMA: s.NBMA, Hostname: s.Host, Priority: s.Priority})
	}
	for _, m := range t.StaticMaps {
		n.StaticMaps = append(n.StaticMaps, nhrp.StaticMap{Proto: m.Address, NBMA: m.NBMA})
	}
	switch t.Multicast {
	case "dynamic":
		n.Multicast = nhrp.MulticastDynamic
	case "nhs":
		n.Multicast = nhrp.MulticastNHS
	case "static":
		n.Multicast = nhrp.MulticastStatic
		n.MulticastNBMA = append(n.MulticastNBMA, t.MulticastNBMA...)
	}
	return daemon.Config{
		Node: c.Node,
		Tunnel: gre.Config{
			Name:      t.Interface,
			Key:       t.Key,
			Prefix:    t.Address,
			Local:     t.Source,
			MTU:       t.MTU,
			TTL:       uint8(t.TTL),
			KeepState: rt.KeepRoutes,
		},
		Dataplane:            t.Dataplane,
		NHRP:                 n,
		Networks:             append(c.Networks[:0:0], c.Networks...),
		Policy:               daemon.Policy{AllowAll: c.Policy.AllowAll, Allow: append(c.Policy.Allow[:0:0], c.Policy.Allow...), Prefixes: c.Policy.Prefixes},
		RedirectGroup:        uint16(t.RedirectGroup),
		ShortcutRulePriority: t.ShortcutRulePriority,
		Forwarding:           c.Forwarding,
		IPsec:                sec,
		Uplinks:              c.Uplinks.failoverConfig(),
		BGP:                  c.bgpConfig(),
		BGPProtocol:          c.bgpProtocol(),
		IPsecOff:             c.IPsecOff,
		Firewall:             c.FirewallPolicy(),
		ManagementPorts:      c.managementPorts(),
		HostStateFile:        hostStateFile(c.Control.Socket, t.Interface),
		StateFile:            stateFile(t.StateFile),
	}
}

// hostStateFile is the host state's file: beside the control socket,
// named after it and the tunnel (/run/dmvpnd/dmvpnd.gre1.host by
// default), unique per node wherever several share a directory.
func hostStateFile(socket, iface string) string {
	if socket == "" || iface == "" {
		return ""
	}
	return strings.TrimSuffix(socket, filepath.Ext(socket)) + "." + iface + ".host"
}

// stateFile is the path of the state file, "" for none.
func stateFile(p string) string {
	if p == "none" {
		return ""
	}
	return p
}

// managementPorts are the TCP ports the control API and the metrics
// listen on beyond loopback: the firewall never accepts them from the
// internet zone.
func (c *Config) managementPorts() []uint16 {
	var out []uint16
	listens := []string{c.Control.Listen}
	if c.Metrics.Enabled {
		listens = append(listens, c.Metrics.Listen)
	}
	for _, l := range listens {
		host, port, err := net.SplitHostPort(l)
		if err != nil {
			continue
		}
		if a, err := netip.ParseAddr(host); (err == nil && a.IsLoopback()) || host == "localhost" {
			continue
		}
		if v, err := strconv.ParseUint(port, 10, 16); err == nil && v > 0 && !slices.Contains(out, uint16(v)) {
			out = append(out, uint16(v))
		}
	}
	return out
}

// defaultDPD gives a hub without ipsec.dpd_delay the hub's default
// (ipsec.DefaultHubDPDDelay, 30 s); a spoke's stays the ipsec package's
// (1 s).
func defaultDPD(sec *ipsec.Config, role string) {
	if sec != nil && sec.DPDDelay == 0 && role == "hub" {
		sec.DPDDelay = ipsec.DefaultHubDPDDelay
	}
}
