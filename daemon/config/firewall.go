package config

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v4"

	"github.com/opendmvpn/dmvpn/firewall"
)

// Firewall is the firewall section: awall's zones by interface and the
// user's rules. Without the section a node with IPsec runs the baseline
// policy (GRE only under IPsec, BGP only on the tunnel: FirewallPolicy),
// one without IPsec or with `firewall: off` none (show dmvpn warns).
type Firewall struct {
	// Internet and LAN are the zones' interfaces; an empty LAN is every
	// interface that is not the tunnel, an internet one or loopback.
	Internet []string
	LAN      []string
	Rules    []FirewallRule
}

// FirewallRule is one rule of the section.
type FirewallRule struct {
	// From and To are zones: internet, tunnel, lan, or local (the router,
	// To only).
	From, To string
	// Protocol is "" (any), a name (tcp, udp, icmp, icmpv6, gre, esp) or
	// a number.
	Protocol string
	Ports    []int
	// Source and Destination narrow the rule when valid.
	Source, Destination netip.Prefix
	// Action is accept, drop or reject.
	Action string
	// Line is where the rule starts in the file.
	Line int
}

// protocols are the protocol names a rule takes.
var protocols = map[string]uint8{"tcp": firewall.ProtoTCP, "udp": firewall.ProtoUDP, "icmp": firewall.ProtoICMP,
	"icmpv6": firewall.ProtoICMPv6, "gre": firewall.ProtoGRE, "esp": firewall.ProtoESP}

// firewallSection decodes the firewall section.
func (d *decoder) firewallSection(n *yaml.Node, p string, c *Config) {
	if d.offSection(n, p, "zones, rules", &c.FirewallOff) {
		return
	}
	f := &Firewall{}
	c.Firewall = f
	ifaces := func(out *[]string) func(*yaml.Node, string) {
		return func(n *yaml.Node, p string) {
			d.seq(n, p, func(_ int, item *yaml.Node, p string) {
				var s string
				if !d.str(item, p, &s) {
					return
				}
				if s == "" || len(s) > 15 || strings.ContainsAny(s, "/ \t*\"") {
					d.errorf(resolve(item), p, "%q: an interface name is 1-15 bytes without '/', '*', quotes or spaces", s)
					return
				}
				*out = append(*out, s)
			})
		}
	}
	d.mapping(n, p, fields{
		"zones": func(n *yaml.Node, p string) {
			d.mapping(n, p, fields{"internet": ifaces(&f.Internet), "lan": ifaces(&f.LAN)})
		},
		"rules": func(n *yaml.Node, p string) {
			d.seq(n, p, func(_ int, item *yaml.Node, p string) { f.Rules = append(f.Rules, d.firewallRule(item, p)) })
		},
	})
}

func (d *decoder) firewallRule(n *yaml.Node, p string) FirewallRule {
	r := FirewallRule{Line: resolve(n).Line}
	zones := []string{"internet", "tunnel", "lan", "local"}
	d.mapping(n, p, fields{
		"from": func(n *yaml.Node, p string) { d.oneOf(n, p, &r.From, zones[:3]...) },
		"to":   func(n *yaml.Node, p string) { d.oneOf(n, p, &r.To, zones...) },
		"protocol": func(n *yaml.Node, p string) {
			rn := resolve(n)
			if rn.Kind == yaml.ScalarNode && rn.ShortTag() == "!!int" {
				var v int
				if d.intField(n, p, 1, 255, &v) {
					r.Protocol = strconv.Itoa(v)
				}
				return
			}
			var s string
			if !d.str(n, p, &s) {
				return
			}
			if _, ok := protocols[s]; !ok {
				d.errorf(rn, p, "%q: want tcp, udp, icmp, icmpv6, gre, esp or a protocol number", s)
				return
			}
			r.Protocol = s
		},
		"ports": func(n *yaml.Node, p string) {
			if rn := resolve(n); rn.Kind == yaml.ScalarNode {
				var v int
				if d.intField(n, p, 1, 65535, &v) {
					r.Ports = append(r.Ports, v)
				}
				return
			}
			d.seq(n, p, func(_ int, item *yaml.Node, p string) {
				var v int
				if d.intField(item, p, 1, 65535, &v) {
					r.Ports = append(r.Ports, v)
				}
			})
		},
		"source":      func(n *yaml.Node, p string) { d.prefixOrHost(n, p, &r.Source) },
		"destination": func(n *yaml.Node, p string) { d.prefixOrHost(n, p, &r.Destination) },
		"action":      func(n *yaml.Node, p string) { d.oneOf(n, p, &r.Action, "accept", "drop", "reject") },
	})
	return r
}

// firewallChecks checks the section as a whole.
func (c *Config) firewallChecks(d *decoder) {
	f := c.Firewall
	if f == nil {
		return
	}
	if len(f.Internet) == 0 && !d.has("firewall.zones.internet") && (c.Uplinks == nil || len(c.Uplinks.List) == 0) {
		d.errorAt("firewall.zones.internet", "missing: list the internet (uplink) interfaces, or configure uplinks")
	}
	zone := map[string]string{}
	if c.Tunnel.Interface != "" {
		zone[c.Tunnel.Interface] = "the tunnel"
	}
	for _, z := range []struct {
		name string
		ifs  []string
	}{{"internet", f.Internet}, {"lan", f.LAN}} {
		for i, n := range z.ifs {
			p := index("firewall.zones."+z.name, i)
			if other, dup := zone[n]; dup {
				d.errorAt(p, "%s is also %s", n, other)
				continue
			}
			zone[n] = "in the " + z.name + " zone"
		}
	}
	for i, r := range f.Rules {
		p := index("firewall.rules", i)
		if !d.has(p + ".from") {
			d.errorAt(p+".from", "missing (internet, tunnel or lan)")
		}
		if !d.has(p + ".to") {
			d.errorAt(p+".to", "missing (internet, tunnel, lan or local)")
		}
		if !d.has(p + ".action") {
			d.errorAt(p+".action", "missing (accept, drop or reject)")
		}
		badProto := d.has(p+".protocol") && r.Protocol == "" // already reported
		if len(r.Ports) > 0 && r.Protocol != "tcp" && r.Protocol != "udp" && !badProto {
			d.errorAt(p+".ports", "ports need protocol tcp or udp")
		}
		if r.Source.IsValid() && r.Destination.IsValid() && r.Source.Addr().Is4() != r.Destination.Addr().Is4() {
			d.errorAt(p+".destination", "%s and the source %s are of different families", r.Destination, r.Source)
		}
	}
}

// FirewallPolicy is the firewall the node runs: its section's, or
// without one the baseline when IPsec is on (the rules that keep GRE
// under IPsec and BGP on the tunnel, everything else accepted); nil with
// `firewall: off` or without IPsec and a section.
func (c *Config) FirewallPolicy() *firewall.Config {
	switch {
	case c.Firewall != nil:
		return c.Firewall.FirewallConfig()
	case c.IPsec != nil && !c.FirewallOff:
		return &firewall.Config{Baseline: true}
	}
	return nil
}

// FirewallConfig returns the firewall package's configuration of the
// section (nil without it).
func (f *Firewall) FirewallConfig() *firewall.Config {
	if f == nil {
		return nil
	}
	out := &firewall.Config{Internet: slices.Clone(f.Internet), LAN: slices.Clone(f.LAN)}
	for i, r := range f.Rules {
		proto, ok := protocols[r.Protocol]
		if !ok && r.Protocol != "" {
			v, _ := strconv.Atoi(r.Protocol)
			proto = uint8(v)
		}
		ur := firewall.UserRule{From: firewall.Zone(r.From), To: firewall.Zone(r.To), Protocol: proto,
			Source: r.Source, Destination: r.Destination, Action: firewall.Verdict(r.Action),
			Where: fmt.Sprintf("firewall.rules[%d] (line %d)", i, r.Line)}
		for _, p := range r.Ports {
			ur.Ports = append(ur.Ports, uint16(p))
		}
		out.Rules = append(out.Rules, ur)
	}
	return out
}

// renderFirewall renders the section for show running-config.
func renderFirewall(f *Firewall) *yaml.Node {
	names := func(ns []string) *yaml.Node {
		seq := &yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle}
		for _, n := range ns {
			seq.Content = append(seq.Content, str(n))
		}
		return seq
	}
	zones := mapNode("internet", names(f.Internet))
	if len(f.LAN) > 0 {
		zones.add("lan", names(f.LAN))
	}
	m := mapNode("zones", zones.Node)
	if len(f.Rules) > 0 {
		seq := &yaml.Node{Kind: yaml.SequenceNode}
		for _, r := range f.Rules {
			rn := mapNode("from", str(r.From), "to", str(r.To))
			if r.Protocol != "" {
				if v, err := strconv.Atoi(r.Protocol); err == nil {
					rn.add("protocol", num(v))
				} else {
					rn.add("protocol", str(r.Protocol))
				}
			}
			if len(r.Ports) > 0 {
				ps := &yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle}
				for _, p := range r.Ports {
					ps.Content = append(ps.Content, num(p))
				}
				rn.add("ports", ps)
			}
			if r.Source.IsValid() {
				rn.add("source", str(r.Source.String()))
			}
			if r.Destination.IsValid() {
				rn.add("destination", str(r.Destination.String()))
			}
			rn.add("action", str(r.Action))
			seq.Content = append(seq.Content, rn.Node)
		}
		m.add("rules", seq)
	}
	return m.Node
}
