package config

import (
	"math"
	"net/netip"
	"strings"
	"time"

	"go.yaml.in/yaml/v4"

	"github.com/opendmvpn/dmvpn/gre/backend"
)

// sections returns the decoders of the top-level keys. A new section is a
// new entry here.
func sections(d *decoder, c *Config) fields {
	return fields{
		"node": func(n *yaml.Node, p string) { d.str(n, p, &c.Node) },
		"role": func(n *yaml.Node, p string) { d.oneOf(n, p, &c.Role, "hub", "spoke") },
		"tunnel": func(n *yaml.Node, p string) {
			d.mapping(n, p, tunnelFields(d, &c.Tunnel))
		},
		"policy": func(n *yaml.Node, p string) {
			d.mapping(n, p, fields{
				"allow":    func(n *yaml.Node, p string) { d.allow(n, p, &c.Policy) },
				"prefixes": func(n *yaml.Node, p string) { d.boolean(n, p, &c.Policy.Prefixes) },
			})
		},
		"networks": func(n *yaml.Node, p string) {
			d.seq(n, p, func(_ int, item *yaml.Node, p string) {
				var pfx netip.Prefix
				if d.prefix(item, p, false, &pfx) {
					c.Networks = append(c.Networks, pfx)
					d.netPaths = append(d.netPaths, p)
				}
			})
		},
		"forwarding": func(n *yaml.Node, p string) { d.boolean(n, p, &c.Forwarding) },
		"ipsec":      func(n *yaml.Node, p string) { d.ipsecSection(n, p, c) },
		"firewall":   func(n *yaml.Node, p string) { d.firewallSection(n, p, c) },
		"uplinks":    func(n *yaml.Node, p string) { d.uplinksSection(n, p, c) },
		"bgp":        func(n *yaml.Node, p string) { d.bgpSection(n, p, c) },
		"limits":     func(n *yaml.Node, p string) { d.limitsSection(n, p, c) },
		"logging": func(n *yaml.Node, p string) {
			d.mapping(n, p, fields{
				"level":  func(n *yaml.Node, p string) { d.oneOf(n, p, &c.Logging.Level, "debug", "info", "warn", "error") },
				"format": func(n *yaml.Node, p string) { d.oneOf(n, p, &c.Logging.Format, "json", "console") },
			})
		},
		"metrics": func(n *yaml.Node, p string) {
			d.mapping(n, p, fields{
				"enabled": func(n *yaml.Node, p string) { d.boolean(n, p, &c.Metrics.Enabled) },
				"listen":  func(n *yaml.Node, p string) { d.hostPort(n, p, &c.Metrics.Listen) },
			})
		},
		"control": func(n *yaml.Node, p string) { d.mapping(n, p, d.controlFields(&c.Control)) },
	}
}

func tunnelFields(d *decoder, t *Tunnel) fields {
	intf := func(out *int, lo, hi int) func(*yaml.Node, string) {
		return func(n *yaml.Node, p string) { d.intField(n, p, lo, hi, out) }
	}
	boolf := func(out *bool) func(*yaml.Node, string) {
		return func(n *yaml.Node, p string) { d.boolean(n, p, out) }
	}
	return fields{
		"interface": func(n *yaml.Node, p string) {
			if d.str(n, p, &t.Interface) && (t.Interface == "" || len(t.Interface) > 15 || strings.ContainsAny(t.Interface, "/ \t")) {
				d.errorf(resolve(n), p, "%q: an interface name is 1-15 bytes without '/' or spaces", t.Interface)
			}
		},
		"address": func(n *yaml.Node, p string) { d.prefix(n, p, true, &t.Address) },
		"key": func(n *yaml.Node, p string) {
			var v int64
			if d.integer(n, p, 0, math.MaxUint32, &v) {
				t.Key = uint32(v)
			}
		},
		"mtu":    intf(&t.MTU, 576, 65535-28),
		"source": func(n *yaml.Node, p string) { d.addr(n, p, &t.Source) },
		"ttl":    intf(&t.TTL, 1, 255),
		"dataplane": func(n *yaml.Node, p string) {
			var s string
			if d.oneOf(n, p, &s, string(backend.Auto), string(backend.Kernel), string(backend.Ebpf), string(backend.Userspace)) {
				t.Dataplane = backend.Kind(s)
			}
		},
		"holding_time": func(n *yaml.Node, p string) {
			d.duration(n, p, time.Second, 65535*time.Second, &t.HoldingTime)
		},
		"max_registration_holding": func(n *yaml.Node, p string) {
			d.duration(n, p, time.Second, 65535*time.Second, &t.MaxRegistrationHolding)
		},
		"registration_interval": func(n *yaml.Node, p string) {
			d.duration(n, p, time.Second, 65535*time.Second, &t.RegistrationInterval)
		},
		"authentication": func(n *yaml.Node, p string) {
			if d.text(n, p, &t.Authentication) && len(t.Authentication) > 8 {
				d.errorf(n, p, "longer than 8 bytes (Cisco's limit)")
			}
		},
		"no_unique": boolf(&t.NoUnique),
		"nhs": func(n *yaml.Node, p string) {
			d.seq(n, p, func(_ int, item *yaml.Node, p string) { t.NHS = append(t.NHS, d.nhs(item, p)) })
		},
		"max_nhs":                intf(&t.MaxNHS, 0, 64),
		"redirect":               boolf(&t.Redirect),
		"shortcut":               boolf(&t.Shortcut),
		"shortcut_table":         intf(&t.ShortcutTable, 1, math.MaxInt32),
		"shortcut_protocol":      intf(&t.ShortcutProtocol, 5, 255),
		"shortcut_rule_priority": intf(&t.ShortcutRulePriority, 1, 32765),
		"shortcut_idle": func(n *yaml.Node, p string) {
			d.duration(n, p, 0, 65535*time.Second, &t.ShortcutIdle)
		},
		"static_maps": func(n *yaml.Node, p string) {
			d.seq(n, p, func(_ int, item *yaml.Node, p string) {
				var m StaticMap
				d.mapping(item, p, fields{
					"address": func(n *yaml.Node, p string) { d.prefixOrHost(n, p, &m.Address) },
					"nbma":    func(n *yaml.Node, p string) { d.addr(n, p, &m.NBMA) },
				})
				t.StaticMaps = append(t.StaticMaps, m)
			})
		},
		"multicast": func(n *yaml.Node, p string) {
			d.oneOf(n, p, &t.Multicast, "off", "dynamic", "nhs", "static")
		},
		"multicast_nbma": func(n *yaml.Node, p string) {
			d.seq(n, p, func(_ int, item *yaml.Node, p string) {
				var a netip.Addr
				if d.addr(item, p, &a) {
					t.MulticastNBMA = append(t.MulticastNBMA, a)
				}
			})
		},
		"purge_on_shutdown": boolf(&t.PurgeOnShutdown),
		"redirect_group":    intf(&t.RedirectGroup, 1, 65535),
		"max_send":          intf(&t.MaxSend, 1, 100000),
		"state_file": func(n *yaml.Node, p string) {
			var s string
			if d.str(n, p, &s) && s == "none" {
				t.StateFile = s
			} else if s != "" {
				d.path(n, p, &t.StateFile)
			}
		},
	}
}

// nhs decodes one next hop server.
func (d *decoder) nhs(n *yaml.Node, path string) NHS {
	var s NHS
	d.mapping(n, path, fields{
		"address": func(n *yaml.Node, p string) { d.addr(n, p, &s.Address) },
		"nbma": func(n *yaml.Node, p string) {
			var v string
			if !d.str(n, p, &v) {
				return
			}
			if a, err := netip.ParseAddr(v); err == nil {
				s.NBMA = a
			} else if validHostname(v) {
				s.Host = v
			} else {
				d.errorf(resolve(n), p, "%q is neither an IP address nor a DNS name", v)
			}
		},
		"priority": func(n *yaml.Node, p string) { d.intField(n, p, 0, 255, &s.Priority) },
	})
	return s
}

// allow decodes a registration policy: "all" or a list of prefixes.
func (d *decoder) allow(n *yaml.Node, path string, pol *Policy) {
	n = resolve(n)
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!str" {
		if n.Value != "all" {
			d.errorf(n, path, "want all or a list of prefixes, got %q", n.Value)
			return
		}
		pol.AllowAll = true
		return
	}
	if n.Kind != yaml.SequenceNode {
		d.errorf(n, path, "want all or a list of prefixes, got %s", kindName(n))
		return
	}
	d.seq(n, path, func(_ int, item *yaml.Node, p string) {
		var pfx netip.Prefix
		if d.prefixOrHost(item, p, &pfx) {
			pol.Allow = append(pol.Allow, pfx)
		}
	})
	if len(pol.Allow) == 0 && len(n.Content) == 0 {
		d.errorf(n, path, "an empty list allows nobody; write all, or list prefixes")
	}
}

// prefixOrHost decodes a prefix, or an address as its host prefix.
func (d *decoder) prefixOrHost(n *yaml.Node, path string, out *netip.Prefix) bool {
	if rn := resolve(n); rn.Kind == yaml.ScalarNode && !strings.Contains(rn.Value, "/") {
		var a netip.Addr
		if !d.addr(n, path, &a) {
			return false
		}
		*out = netip.PrefixFrom(a, a.BitLen())
		return true
	}
	return d.prefix(n, path, false, out)
}

// hostPort decodes a host:port listen address.
func (d *decoder) hostPort(n *yaml.Node, path string, out *string) bool {
	var s string
	if !d.str(n, path, &s) {
		return false
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		host, port, ok := strings.Cut(s, ":")
		if !ok || host != "localhost" || port == "" {
			d.errorf(resolve(n), path, "%q is not address:port (like 127.0.0.1:9474)", s)
			return false
		}
		var p netip.AddrPort
		if p, err = netip.ParseAddrPort("127.0.0.1:" + port); err != nil {
			d.errorf(resolve(n), path, "%q has a bad port", s)
			return false
		}
		ap = p
	}
	if ap.Port() == 0 {
		d.errorf(resolve(n), path, "%q needs a port", s)
		return false
	}
	*out = s
	return true
}

// path decodes an absolute file path.
func (d *decoder) path(n *yaml.Node, p string, out *string) bool {
	var s string
	if !d.str(n, p, &s) {
		return false
	}
	if !strings.HasPrefix(s, "/") {
		d.errorf(resolve(n), p, "%q is not an absolute path", s)
		return false
	}
	*out = s
	return true
}

// validHostname reports whether s is a DNS name.
func validHostname(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	letters := false
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			switch {
			case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
				letters = true
			case c >= '0' && c <= '9', c == '-':
			default:
				return false
			}
		}
	}
	return letters
}
