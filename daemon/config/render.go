package config

import (
	"bytes"
	"fmt"
	"net/netip"
	"strconv"

	"go.yaml.in/yaml/v4"
)

// Masked stands for a secret in the running configuration.
const Masked = "********"

// YAML renders the configuration as a file Parse reads back to the same
// Config, defaults included.
func (c *Config) YAML() []byte { return c.render(false) }

// MaskedYAML is YAML with the secrets masked (the NHRP password): the
// running configuration as the control API and the shell show it. It
// still parses, with the password replaced by Masked.
func (c *Config) MaskedYAML() []byte { return c.render(true) }

func (c *Config) render(mask bool) []byte {
	t := &c.Tunnel
	tun := mapNode(
		"interface", str(t.Interface),
		"address", str(t.Address.String()),
		"key", hexInt(t.Key),
	)
	if t.MTU != 0 {
		tun.add("mtu", num(t.MTU))
	}
	if t.Source.IsValid() {
		tun.add("source", str(t.Source.String()))
	}
	if t.TTL != 0 {
		tun.add("ttl", num(t.TTL))
	}
	tun.add("dataplane", str(string(t.Dataplane)))
	tun.add("holding_time", raw(durationString(t.HoldingTime)))
	if t.MaxRegistrationHolding != 0 {
		tun.add("max_registration_holding", raw(durationString(t.MaxRegistrationHolding)))
	}
	if t.RegistrationInterval != 0 {
		tun.add("registration_interval", raw(durationString(t.RegistrationInterval)))
	}
	if t.Authentication != "" {
		if mask {
			v := str(Masked)
			v.Style = yaml.SingleQuotedStyle
			v.LineComment = "# masked: the password is not shown"
			tun.add("authentication", v)
		} else {
			tun.add("authentication", str(t.Authentication))
		}
	}
	tun.add("no_unique", boolean(t.NoUnique))
	if len(t.NHS) > 0 {
		seq := &yaml.Node{Kind: yaml.SequenceNode}
		for _, n := range t.NHS {
			m := mapNode()
			if n.Address.IsValid() {
				m.add("address", str(n.Address.String()))
			}
			if n.NBMA.IsValid() {
				m.add("nbma", str(n.NBMA.String()))
			} else {
				m.add("nbma", str(n.Host))
			}
			m.add("priority", num(n.Priority))
			seq.Content = append(seq.Content, m.Node)
		}
		tun.add("nhs", seq)
	}
	if t.MaxNHS != 0 {
		tun.add("max_nhs", num(t.MaxNHS))
	}
	tun.add("redirect", boolean(t.Redirect))
	tun.add("shortcut", boolean(t.Shortcut))
	tun.add("shortcut_table", num(t.ShortcutTable))
	tun.add("shortcut_protocol", num(t.ShortcutProtocol))
	tun.add("shortcut_rule_priority", num(t.ShortcutRulePriority))
	if t.ShortcutIdle != 0 {
		tun.add("shortcut_idle", raw(durationString(t.ShortcutIdle)))
	}
	if len(t.StaticMaps) > 0 {
		seq := &yaml.Node{Kind: yaml.SequenceNode}
		for _, m := range t.StaticMaps {
			seq.Content = append(seq.Content, mapNode("address", str(m.Address.String()), "nbma", str(m.NBMA.String())).Node)
		}
		tun.add("static_maps", seq)
	}
	tun.add("multicast", str(t.Multicast))
	if len(t.MulticastNBMA) > 0 {
		tun.add("multicast_nbma", addrList(t.MulticastNBMA))
	}
	tun.add("purge_on_shutdown", boolean(t.PurgeOnShutdown))
	tun.add("redirect_group", num(t.RedirectGroup))
	if t.MaxSend != 0 {
		tun.add("max_send", num(t.MaxSend))
	}
	if t.StateFile != "" {
		tun.add("state_file", str(t.StateFile))
	}

	root := mapNode("node", str(c.Node), "role", str(c.Role), "tunnel", tun.Node)
	if c.Role == "hub" {
		pol := mapNode("allow", prefixList(c.Policy.Allow))
		if c.Policy.AllowAll {
			pol = mapNode("allow", str("all"))
		}
		if c.Policy.Prefixes {
			pol.add("prefixes", boolean(true))
		}
		root.add("policy", pol.Node)
	}
	if len(c.Networks) > 0 {
		root.add("networks", prefixList(c.Networks))
	}
	root.add("forwarding", boolean(c.Forwarding))
	if c.IPsec != nil {
		root.add("ipsec", renderIPsec(c.IPsec))
	} else if c.IPsecOff {
		root.add("ipsec", str("off"))
	}
	if c.Firewall != nil {
		root.add("firewall", renderFirewall(c.Firewall))
	} else if c.FirewallOff {
		root.add("firewall", str("off"))
	}
	if c.Uplinks != nil {
		root.add("uplinks", renderUplinks(c.Uplinks))
	}
	if c.BGP != nil {
		root.add("bgp", renderBGP(c.BGP))
	}
	if l := renderLimits(c.Limits); l != nil {
		root.add("limits", l)
	}
	root.add("logging", mapNode("level", str(c.Logging.Level), "format", str(c.Logging.Format)).Node)
	root.add("metrics", mapNode("enabled", boolean(c.Metrics.Enabled), "listen", str(c.Metrics.Listen)).Node)
	ctl := mapNode("socket", str(c.Control.Socket))
	for _, kv := range [][2]string{{"group", c.Control.Group}, {"listen", c.Control.Listen}, {"token_file", c.Control.TokenFile},
		{"tls_cert", c.Control.TLSCert}, {"tls_key", c.Control.TLSKey}, {"client_ca", c.Control.ClientCA}} {
		if kv[1] != "" {
			ctl.add(kv[0], str(kv[1]))
		}
	}
	root.add("control", ctl.Node)

	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(root.Node); err != nil {
		// Encoding a tree of plain scalars cannot fail.
		panic(fmt.Sprintf("config: rendering: %v", err))
	}
	_ = enc.Close()
	return b.Bytes()
}

// mnode is a mapping node under construction.
type mnode struct{ *yaml.Node }

func mapNode(kv ...any) mnode {
	m := mnode{&yaml.Node{Kind: yaml.MappingNode}}
	for i := 0; i+1 < len(kv); i += 2 {
		m.add(kv[i].(string), kv[i+1].(*yaml.Node))
	}
	return m
}

func (m mnode) add(k string, v *yaml.Node) {
	m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: k}, v)
}

func str(s string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s} }
func num(v int) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: strconv.Itoa(v)}
}
func boolean(v bool) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: strconv.FormatBool(v)}
}

// raw is a plain scalar whose type YAML infers (a duration in seconds is a
// number, "1m30s" a string).
func raw(s string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Value: s} }

func hexInt(v uint32) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: fmt.Sprintf("%#x", v)}
}

func prefixList(ps []netip.Prefix) *yaml.Node {
	seq := &yaml.Node{Kind: yaml.SequenceNode}
	for _, p := range ps {
		seq.Content = append(seq.Content, str(p.String()))
	}
	return seq
}

func addrList(as []netip.Addr) *yaml.Node {
	seq := &yaml.Node{Kind: yaml.SequenceNode}
	for _, a := range as {
		seq.Content = append(seq.Content, str(a.String()))
	}
	return seq
}
