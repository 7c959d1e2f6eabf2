package config

import (
	"math"
	"net/netip"
	"strings"
	"time"

	"go.yaml.in/yaml/v4"

	"github.com/opendmvpn/dmvpn/failover"
)

// Uplinks is the uplinks section: the node's ISP uplinks, probed and
// failed over (pingu's job), and what the kernel and the firewall do with
// them. Written as a list of uplinks, or as a mapping with the settings
// below and the list under `list`.
type Uplinks struct {
	// RulePriority, RouteProtocol and MarkMask place the uplinks' rules,
	// routes and marks (failover.Config).
	RulePriority  int
	RouteProtocol int
	MarkMask      uint32
	List          []Uplink
}

// Uplink is one ISP uplink (failover.Uplink).
type Uplink struct {
	Name      string
	Interface string
	Gateway   netip.Addr
	Table     int
	Mark      uint32
	Probes    []netip.Addr
	Interval  time.Duration
	Timeout   time.Duration
	// Retries is -1 for none in the failover package; here 0 is none.
	Retries         int
	DownAfter       int
	RepliesRequired int
	HostsRequired   int
	Weight          int
	Preference      int
	Masquerade      bool
}

// uplinksSection decodes the uplinks section.
func (d *decoder) uplinksSection(n *yaml.Node, p string, c *Config) {
	u := &Uplinks{}
	c.Uplinks = u
	list := func(n *yaml.Node, p string) {
		d.seq(n, p, func(_ int, item *yaml.Node, p string) { u.List = append(u.List, d.uplink(item, p)) })
	}
	if resolve(n).Kind == yaml.SequenceNode {
		list(n, p)
		return
	}
	d.mapping(n, p, fields{
		"rule_priority":  func(n *yaml.Node, p string) { d.intField(n, p, 223, 32700, &u.RulePriority) },
		"route_protocol": func(n *yaml.Node, p string) { d.intField(n, p, 5, 255, &u.RouteProtocol) },
		"mark_mask":      func(n *yaml.Node, p string) { d.mark(n, p, &u.MarkMask) },
		"list":           list,
	})
}

// uplink decodes one uplink.
func (d *decoder) uplink(n *yaml.Node, p string) Uplink {
	var u Uplink
	u.Retries = -1 // unset
	intf := func(out *int, lo, hi int) func(*yaml.Node, string) {
		return func(n *yaml.Node, p string) { d.intField(n, p, lo, hi, out) }
	}
	d.mapping(n, p, fields{
		"name": func(n *yaml.Node, p string) {
			if d.str(n, p, &u.Name) && !validLabel(u.Name) {
				d.errorf(resolve(n), p, "%q: use 1-24 of a-z, 0-9, '_' and '-'", u.Name)
			}
		},
		"interface": func(n *yaml.Node, p string) {
			if d.str(n, p, &u.Interface) && (u.Interface == "" || len(u.Interface) > 15 || strings.ContainsAny(u.Interface, "/ \t")) {
				d.errorf(resolve(n), p, "%q: an interface name is 1-15 bytes without '/' or spaces", u.Interface)
			}
		},
		"gateway": func(n *yaml.Node, p string) {
			if d.addr(n, p, &u.Gateway) && !u.Gateway.Is4() {
				d.errorf(resolve(n), p, "%s: the uplinks are IPv4", u.Gateway)
			}
		},
		"table": intf(&u.Table, 1, 252),
		"mark":  func(n *yaml.Node, p string) { d.mark(n, p, &u.Mark) },
		"probes": func(n *yaml.Node, p string) {
			d.seq(n, p, func(_ int, item *yaml.Node, p string) {
				var a netip.Addr
				if !d.addr(item, p, &a) {
					return
				}
				if !a.Is4() || !a.IsGlobalUnicast() {
					d.errorf(resolve(item), p, "%s: a probe host is a unicast IPv4 address", a)
					return
				}
				u.Probes = append(u.Probes, a)
			})
		},
		"interval":         func(n *yaml.Node, p string) { d.duration(n, p, 10*time.Millisecond, time.Hour, &u.Interval) },
		"timeout":          func(n *yaml.Node, p string) { d.duration(n, p, time.Millisecond, time.Hour, &u.Timeout) },
		"retries":          intf(&u.Retries, 0, 4),
		"down_after":       intf(&u.DownAfter, 1, 100),
		"replies_required": intf(&u.RepliesRequired, 1, 100),
		"hosts_required":   intf(&u.HostsRequired, 1, 64),
		"weight":           intf(&u.Weight, 1, failover.MaxWeight),
		"preference":       intf(&u.Preference, 0, 255),
		"masquerade":       func(n *yaml.Node, p string) { d.boolean(n, p, &u.Masquerade) },
	})
	return u
}

// mark decodes a 32-bit mark (decimal or 0x…).
func (d *decoder) mark(n *yaml.Node, p string, out *uint32) {
	var v int64
	if d.integer(n, p, 0, math.MaxUint32, &v) {
		*out = uint32(v)
	}
}

// validLabel: 1-24 of [a-z0-9_-] (the firewall names its rules after the
// uplinks).
func validLabel(s string) bool {
	if s == "" || len(s) > 24 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// uplinksDefaults fills the section's defaults (those of the failover
// package) so that show running-config prints them.
func (c *Config) uplinksDefaults(d *decoder) {
	u := c.Uplinks
	if u == nil {
		return
	}
	fc := u.failover().WithDefaults()
	u.RulePriority, u.RouteProtocol, u.MarkMask = fc.RulePriority, fc.Protocol, fc.MarkMask
	for i := range u.List {
		x, f := &u.List[i], fc.Uplinks[i]
		x.Name, x.Table, x.Mark, x.Interval, x.Timeout = f.Name, f.Table, f.Mark, f.Interval, f.Timeout
		x.Retries, x.DownAfter, x.RepliesRequired, x.HostsRequired, x.Weight = f.Retries, f.DownAfter, f.RepliesRequired, f.HostsRequired, f.Weight
	}
}

// uplinksChecks reports the section's contradictions, and those with the
// tunnel's settings.
func (c *Config) uplinksChecks(d *decoder) {
	u := c.Uplinks
	if u == nil {
		return
	}
	base := "uplinks"
	if d.has("uplinks.list") {
		base = "uplinks.list"
	}
	at := func(i int, field string) string {
		p := index(base, i)
		if field != "" && d.has(p+"."+field) {
			return p + "." + field
		}
		return p
	}
	if len(u.List) == 0 && !d.failed("uplinks") {
		d.errorAt("uplinks", "no uplinks listed")
	}
	if u.MarkMask&0x42 != 0 {
		d.errorAt("uplinks.mark_mask", "%#x overlaps charon's mark 0x42", u.MarkMask)
	}
	t := &c.Tunnel
	// The rules of failover.MaxUplinks uplinks are the uplinks' from the
	// start, so a reload can add one.
	first, last := u.RulePriority, u.RulePriority+2+2*failover.MaxUplinks-1
	if len(u.List) > failover.MaxUplinks {
		d.errorAt(base, "%d uplinks: at most %d", len(u.List), failover.MaxUplinks)
	}
	if t.ShortcutRulePriority >= first && t.ShortcutRulePriority <= last {
		d.errorAt("uplinks.rule_priority", "the uplinks' rules take %d-%d, which holds tunnel.shortcut_rule_priority %d", first, last, t.ShortcutRulePriority)
	}
	if last >= 32766 {
		d.errorAt("uplinks.rule_priority", "the uplinks' rules would reach %d: the kernel's main rule is 32766", last)
	}
	if u.RouteProtocol == t.ShortcutProtocol {
		d.errorAt("uplinks.route_protocol", "%d is tunnel.shortcut_protocol", u.RouteProtocol)
	}
	if c.FirewallPolicy() == nil && len(u.List) > 0 {
		d.warnAt("uplinks", "no firewall (no firewall section and no IPsec, or firewall: off): the uplinks' connection marks are not kept, so established flows follow the default route when it moves")
	}
	names, ifs, tables, marks := map[string]int{}, map[string]int{}, map[int]int{}, map[uint32]int{}
	for i, x := range u.List {
		if x.Interface == "" && !d.failed(index(base, i)) {
			d.errorAt(at(i, ""), "missing interface")
		}
		if j, ok := ifs[x.Interface]; ok && x.Interface != "" {
			d.errorAt(at(i, "interface"), "%s is also uplink %d's", x.Interface, j)
		}
		ifs[x.Interface] = i
		if x.Interface != "" && x.Interface == t.Interface {
			d.errorAt(at(i, "interface"), "%s is the tunnel interface", x.Interface)
		}
		if j, ok := names[x.Name]; ok {
			d.errorAt(at(i, "name"), "%q is also uplink %d's name", x.Name, j)
		}
		names[x.Name] = i
		switch j, ok := tables[x.Table]; {
		case x.Table == 220:
			d.errorAt(at(i, "table"), "220 is charon's table")
		case x.Table == t.ShortcutTable:
			d.errorAt(at(i, "table"), "%d is tunnel.shortcut_table", x.Table)
		case ok:
			d.errorAt(at(i, "table"), "%d is also uplink %d's table", x.Table, j)
		}
		tables[x.Table] = i
		switch j, ok := marks[x.Mark]; {
		case x.Mark == 0 || x.Mark&^u.MarkMask != 0:
			d.errorAt(at(i, "mark"), "%#x must be non-zero and within the mark mask %#x", x.Mark, u.MarkMask)
		case ok:
			d.errorAt(at(i, "mark"), "%#x is also uplink %d's mark", x.Mark, j)
		}
		marks[x.Mark] = i
		if x.Masquerade && c.FirewallPolicy() == nil {
			d.errorAt(at(i, "masquerade"), "the firewall holds the NAT rules, and this node runs none (no firewall section and no IPsec, or firewall: off): add a firewall section")
		}
		if len(x.Probes) == 0 && !d.failed(at(i, "probes")) {
			d.errorAt(at(i, "probes"), "no probe hosts (the addresses probed through the uplink)")
		}
		seen := map[netip.Addr]bool{}
		for _, h := range x.Probes {
			if seen[h] {
				d.errorAt(at(i, "probes"), "%s is listed twice", h)
			}
			seen[h] = true
		}
		if x.Timeout > x.Interval {
			d.errorAt(at(i, "timeout"), "%v is longer than the interval (%v)", x.Timeout, x.Interval)
		}
		if len(x.Probes) > 0 && x.HostsRequired > len(x.Probes) {
			d.errorAt(at(i, "hosts_required"), "%d of %d probe hosts", x.HostsRequired, len(x.Probes))
		}
	}
	if len(d.errs) == 0 {
		// What the checks above missed (none expected): the package's own.
		if err := u.failover().WithDefaults().Validate(); err != nil {
			d.errorAt("uplinks", "%v", err)
		}
	}
}

// failover returns the failover package's configuration.
func (u *Uplinks) failover() failover.Config {
	if u == nil {
		return failover.Config{}
	}
	fc := failover.Config{RulePriority: u.RulePriority, Protocol: u.RouteProtocol, MarkMask: u.MarkMask}
	for _, x := range u.List {
		retries := x.Retries
		switch retries {
		case -1:
			retries = 0 // the package's default
		case 0:
			retries = -1 // none
		}
		fc.Uplinks = append(fc.Uplinks, failover.Uplink{
			Name: x.Name, Interface: x.Interface, Gateway: x.Gateway, Table: x.Table, Mark: x.Mark,
			Probes: append([]netip.Addr(nil), x.Probes...), Interval: x.Interval, Timeout: x.Timeout,
			Retries: retries, DownAfter: x.DownAfter, RepliesRequired: x.RepliesRequired,
			HostsRequired: x.HostsRequired, Weight: x.Weight, Preference: x.Preference, Masquerade: x.Masquerade,
		})
	}
	return fc
}

// failoverConfig is the daemon's: nil without the section.
func (u *Uplinks) failoverConfig() *failover.Config {
	if u == nil {
		return nil
	}
	fc := u.failover().WithDefaults()
	return &fc
}

// renderUplinks renders the section for show running-config.
func renderUplinks(u *Uplinks) *yaml.Node {
	seq := &yaml.Node{Kind: yaml.SequenceNode}
	for _, x := range u.List {
		m := mapNode("name", str(x.Name), "interface", str(x.Interface))
		if x.Gateway.IsValid() {
			m.add("gateway", str(x.Gateway.String()))
		}
		m.add("table", num(x.Table))
		m.add("mark", hexInt(x.Mark))
		m.add("probes", addrList(x.Probes))
		m.add("interval", raw(durationString(x.Interval)))
		m.add("timeout", raw(durationString(x.Timeout)))
		m.add("retries", num(x.Retries))
		m.add("down_after", num(x.DownAfter))
		m.add("replies_required", num(x.RepliesRequired))
		m.add("hosts_required", num(x.HostsRequired))
		m.add("weight", num(x.Weight))
		m.add("preference", num(x.Preference))
		m.add("masquerade", boolean(x.Masquerade))
		seq.Content = append(seq.Content, m.Node)
	}
	return mapNode("rule_priority", num(u.RulePriority), "route_protocol", num(u.RouteProtocol),
		"mark_mask", hexInt(u.MarkMask), "list", seq).Node
}
