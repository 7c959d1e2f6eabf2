package config

import (
	"github.com/opendmvpn/dmvpn/daemon"
	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// Runtime are the settings that come from the command line rather than the
// file.
type Runtime struct {
	// KeepRoutes leaves routes and neighbour entries in the kernel when the
	// daemon stops (a quick restart adopts them).
	KeepRoutes bool
}

// Daemon returns the daemon's configuration.
func (c *Config) Daemon(rt Runtime) daemon.Config {
	t := &c.Tunnel
	n := nhrp.Config{
		HoldingTime:          t.HoldingTime,
		RegistrationInterval: t.RegistrationInterval,
		NoUnique:             t.NoUnique,
		MaxNHS:               t.MaxNHS,
		Redirect:             t.Redirect,
		Shortcut:             t.Shortcut,
		ShortcutTable:        t.ShortcutTable,
		ShortcutProtocol:     t.ShortcutProtocol,
		ShortcutIdle:         t.ShortcutIdle,
		PurgeOnShutdown:      t.PurgeOnShutdown,
		KeepKernelState:      rt.KeepRoutes,
		MaxSend:              t.MaxSend,
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
		Policy:               daemon.Policy{AllowAll: c.Policy.AllowAll, Allow: append(c.Policy.Allow[:0:0], c.Policy.Allow...)},
		RedirectGroup:        uint16(t.RedirectGroup),
		ShortcutRulePriority: t.ShortcutRulePriority,
		Forwarding:           c.Forwarding,
		IPsec:                c.IPsec.ipsecConfig(),
		IPsecOff:             c.IPsecOff,
	}
}
