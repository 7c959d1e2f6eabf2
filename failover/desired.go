package failover

import (
	"cmp"
	"net/netip"
	"slices"
	"strconv"
)

// Rule priorities, from Config.RulePriority (P):
//
//	P      lookup main suppress_prefixlength 0   the main table's routes but its default win
//	P+1    ipproto gre lookup <active table>    the tunnel's underlay leaves through the active uplink
//	P+2+2i from <uplink i's address> lookup <its table>
//	P+3+2i fwmark <uplink i's mark>/<mask> lookup <its table>
//
// The first keeps every specific route of the main table (LANs, the
// tunnel, connected networks) ahead of the uplinks' tables, so a
// connection mark or a source address only ever picks the default route.
// The source rule makes traffic from an uplink's address (its probes, IKE
// bound to it) leave through that uplink; the mark rule keeps a flow on the
// uplink it started on.
const (
	rulesFirst     = 2
	rulesPerUplink = 2
)

// Route is a route the uplinks want in the kernel.
type Route struct {
	Table int
	Dst   netip.Prefix
	// Src is the preferred source address (connected routes).
	Src netip.Addr
	// Link marks a directly connected route (scope link, no gateway).
	Link     bool
	Nexthops []Nexthop
	Protocol int
}

// Nexthop is one path of a route.
type Nexthop struct {
	Gateway   netip.Addr // invalid for a connected route
	Interface string
	Index     int
	// Weight is the path's share in a multipath route (1–256).
	Weight int
}

// Rule is a policy rule the uplinks want.
type Rule struct {
	Priority int
	Table    int
	// Src matches the source address; invalid: any.
	Src netip.Prefix
	// Mark and Mask match the packet mark; Mask 0: any.
	Mark, Mask uint32
	// IPProto matches the IP protocol; 0: any.
	IPProto int
	// SuppressPrefixLen ignores routes of that length or shorter found
	// through the rule; -1: none.
	SuppressPrefixLen int
}

// Sysctl is a kernel setting the uplinks want: Key as under
// /proc/sys ("net/ipv4/fib_multipath_hash_policy").
type Sysctl struct {
	Key, Value string
}

// Desired is the kernel state that follows from the uplinks' states: what
// the host-state owner must make true.
type Desired struct {
	Routes  []Route
	Rules   []Rule
	Sysctls []Sysctl
	// Main lists the uplinks carrying the main table's default route,
	// the active one first.
	Main []string
	// Active is the uplink whose address is this node's NBMA address;
	// NBMA lists the usable uplinks' addresses, the active one's first.
	Active string
	NBMA   []netip.Addr
	// FailOpen says every uplink is down and all of them carry the
	// default route anyway (a dead probe host must not cut the node off).
	FailOpen bool
}

// view is an uplink as the desired state is computed from: its
// configuration, what the kernel says of it and its state.
type view struct {
	cfg     Uplink
	index   int
	addr    netip.Prefix // its IPv4 address with the connected prefix
	gateway netip.Addr
	state   State
}

// usable reports whether the uplink can carry a default route.
func (v view) usable() bool { return v.index > 0 && v.addr.IsValid() && v.gateway.IsValid() }

// desired computes the kernel state of the uplinks.
func desired(c Config, vs []view) Desired {
	var d Desired
	d.Rules = append(d.Rules, Rule{Priority: c.RulePriority, Table: mainTable, SuppressPrefixLen: 0})
	d.Sysctls = []Sysctl{
		{"net/ipv4/fib_multipath_hash_policy", "1"},
		{"net/ipv4/fib_multipath_use_neigh", "1"},
	}
	var usable []view
	for i, v := range vs {
		d.Sysctls = append(d.Sysctls, Sysctl{"net/ipv4/conf/" + v.cfg.Interface + "/rp_filter", "2"})
		if !v.usable() {
			continue
		}
		usable = append(usable, v)
		nh := Nexthop{Gateway: v.gateway, Interface: v.cfg.Interface, Index: v.index, Weight: v.cfg.Weight}
		d.Routes = append(d.Routes,
			Route{Table: v.cfg.Table, Dst: v.addr.Masked(), Src: v.addr.Addr(), Link: true, Protocol: c.Protocol,
				Nexthops: []Nexthop{{Interface: v.cfg.Interface, Index: v.index, Weight: 1}}},
			Route{Table: v.cfg.Table, Dst: defaultRoute, Protocol: c.Protocol, Nexthops: []Nexthop{withWeight(nh, 1)}},
		)
		base := c.RulePriority + rulesFirst + rulesPerUplink*i
		d.Rules = append(d.Rules,
			Rule{Priority: base, Table: v.cfg.Table, Src: netip.PrefixFrom(v.addr.Addr(), 32), SuppressPrefixLen: -1},
			Rule{Priority: base + 1, Table: v.cfg.Table, Mark: v.cfg.Mark, Mask: c.MarkMask, SuppressPrefixLen: -1},
		)
	}
	if len(usable) == 0 {
		return d
	}
	carry := slices.DeleteFunc(slices.Clone(usable), func(v view) bool { return v.state != StateUp })
	if len(carry) == 0 {
		carry, d.FailOpen = slices.Clone(usable), true
	}
	best := slices.MinFunc(carry, func(a, b view) int { return cmp.Compare(a.cfg.Preference, b.cfg.Preference) }).cfg.Preference
	carry = slices.DeleteFunc(carry, func(v view) bool { return v.cfg.Preference != best })
	main := Route{Table: mainTable, Dst: defaultRoute, Protocol: c.Protocol}
	for _, v := range carry {
		main.Nexthops = append(main.Nexthops, Nexthop{Gateway: v.gateway, Interface: v.cfg.Interface, Index: v.index, Weight: v.cfg.Weight})
		d.Main = append(d.Main, v.cfg.Name)
	}
	if len(main.Nexthops) == 1 {
		main.Nexthops[0].Weight = 1
	}
	d.Routes = append(d.Routes, main)
	active := carry[0]
	d.Active = active.cfg.Name
	d.Rules = append(d.Rules, Rule{Priority: c.RulePriority + 1, Table: active.cfg.Table, IPProto: protoGRE, SuppressPrefixLen: -1})
	d.NBMA = append(d.NBMA, active.addr.Addr())
	for _, v := range usable {
		if v.cfg.Name != active.cfg.Name {
			d.NBMA = append(d.NBMA, v.addr.Addr())
		}
	}
	slices.SortStableFunc(d.Rules, func(a, b Rule) int { return cmp.Compare(a.Priority, b.Priority) })
	return d
}

func withWeight(n Nexthop, w int) Nexthop {
	n.Weight = w
	return n
}

const (
	mainTable = 254
	protoGRE  = 47
)

var defaultRoute = netip.MustParsePrefix("0.0.0.0/0")

// String renders a route as ip route shows it, for logs and tests.
func (r Route) String() string {
	s := r.Dst.String()
	if r.Dst.Bits() == 0 {
		s = "default"
	}
	if len(r.Nexthops) == 1 {
		n := r.Nexthops[0]
		if n.Gateway.IsValid() {
			s += " via " + n.Gateway.String()
		}
		s += " dev " + n.Interface
	} else {
		for _, n := range r.Nexthops {
			s += " nexthop via " + n.Gateway.String() + " dev " + n.Interface + " weight " + strconv.Itoa(n.Weight)
		}
	}
	if r.Link {
		s += " scope link"
	}
	if r.Src.IsValid() {
		s += " src " + r.Src.String()
	}
	return s + " table " + strconv.Itoa(r.Table) + " proto " + strconv.Itoa(r.Protocol)
}

// String renders a rule as ip rule shows it.
func (r Rule) String() string {
	s := strconv.Itoa(r.Priority) + ":"
	if r.Src.IsValid() {
		s += " from " + r.Src.String()
	} else {
		s += " from all"
	}
	if r.Mask != 0 {
		s += " fwmark " + hex(r.Mark) + "/" + hex(r.Mask)
	}
	if r.IPProto != 0 {
		s += " ipproto " + strconv.Itoa(r.IPProto)
	}
	s += " lookup " + strconv.Itoa(r.Table)
	if r.SuppressPrefixLen >= 0 {
		s += " suppress_prefixlength " + strconv.Itoa(r.SuppressPrefixLen)
	}
	return s
}

func hex(v uint32) string { return "0x" + strconv.FormatUint(uint64(v), 16) }
