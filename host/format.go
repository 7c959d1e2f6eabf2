package host

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// The String methods write entries the way `ip rule`, `ip route` and
// `ip xfrm policy` show them, prefixed with the family: the Manager's
// errors and change notes and the golden tests use them.

var actionNames = map[RuleAction]string{Lookup: "lookup", Goto: "goto", Nop: "nop",
	Blackhole: "blackhole", Unreachable: "unreachable", Prohibit: "prohibit"}

// String names the family as the Manager prints it ("ipv4").
func (f Family) String() string {
	switch f {
	case IPv4:
		return "ipv4"
	case IPv6:
		return "ipv6"
	}
	return fmt.Sprintf("family(%d)", uint8(f))
}

// String writes the rule as `ip rule` shows it.
func (r Rule) String() string {
	r = r.normal()
	var b strings.Builder
	fmt.Fprintf(&b, "%v %d:", r.Family, r.Priority)
	if r.Invert {
		b.WriteString(" not")
	}
	if r.Src.IsValid() {
		fmt.Fprintf(&b, " from %v", r.Src)
	}
	if r.Dst.IsValid() {
		fmt.Fprintf(&b, " to %v", r.Dst)
	}
	if r.Mark != 0 || r.Mask != 0xffffffff {
		fmt.Fprintf(&b, " fwmark %#x/%#x", r.Mark, r.Mask)
	}
	if r.IPProto != 0 {
		fmt.Fprintf(&b, " ipproto %d", r.IPProto)
	}
	if r.IifName != "" {
		fmt.Fprintf(&b, " iif %s", r.IifName)
	}
	if r.OifName != "" {
		fmt.Fprintf(&b, " oif %s", r.OifName)
	}
	if !r.Invert && !r.Src.IsValid() && !r.Dst.IsValid() && r.Mark == 0 && r.IPProto == 0 && r.IifName == "" && r.OifName == "" {
		b.WriteString(" all")
	}
	name := actionNames[r.Action]
	if name == "" {
		name = fmt.Sprintf("action(%d)", r.Action)
	}
	fmt.Fprintf(&b, " %s", name)
	switch r.Action {
	case Lookup:
		fmt.Fprintf(&b, " %s", tableName(r.Table))
	case Goto:
		fmt.Fprintf(&b, " %d", r.Goto)
	}
	if r.Suppress {
		fmt.Fprintf(&b, " suppress_prefixlength %d", r.SuppressPrefixLen)
	}
	return b.String()
}

func tableName(t int) string {
	switch t {
	case 0, Main:
		return "main"
	case 253:
		return "default"
	case 255:
		return "local"
	}
	return fmt.Sprint(t)
}

var routeTypeNames = map[RouteType]string{BlackholeRoute: "blackhole", UnreachableRoute: "unreachable",
	ProhibitRoute: "prohibit", ThrowRoute: "throw"}

// String writes the route as `ip route` shows it.
func (r Route) String() string {
	r = r.normal()
	var b strings.Builder
	fmt.Fprintf(&b, "%v table %s ", r.family(), tableName(r.Table))
	if n := routeTypeNames[r.Type]; n != "" {
		b.WriteString(n + " ")
	} else if r.Type != Unicast {
		fmt.Fprintf(&b, "type(%d) ", r.Type)
	}
	b.WriteString(r.Dst.String())
	if r.Metric != 0 {
		fmt.Fprintf(&b, " metric %d", r.Metric)
	}
	if r.Src.IsValid() {
		fmt.Fprintf(&b, " src %v", r.Src)
	}
	if r.MTU != 0 {
		fmt.Fprintf(&b, " mtu %d", r.MTU)
	}
	for _, h := range r.NextHops {
		if len(r.NextHops) > 1 {
			b.WriteString(" nexthop")
		}
		b.WriteString(h.String())
		if len(r.NextHops) > 1 {
			fmt.Fprintf(&b, " weight %d", h.Weight)
		}
	}
	if r.Protocol != 0 {
		fmt.Fprintf(&b, " proto %d", r.Protocol)
	}
	return b.String()
}

// String writes one next hop of a route.
func (h NextHop) String() string {
	var b strings.Builder
	if h.Gw.IsValid() {
		fmt.Fprintf(&b, " via %v", h.Gw)
	}
	switch {
	case h.Dev != "":
		fmt.Fprintf(&b, " dev %s", h.Dev)
	case h.Index != 0:
		fmt.Fprintf(&b, " dev #%d", h.Index)
	}
	if h.Onlink {
		b.WriteString(" onlink")
	}
	return b.String()
}

var dirNames = map[XfrmDir]string{XfrmIn: "in", XfrmOut: "out", XfrmFwd: "fwd"}

// String writes the policy as `ip xfrm policy` shows it.
func (p XfrmPolicy) String() string {
	p = p.normal()
	action := "allow"
	if p.Action == XfrmBlock {
		action = "block"
	}
	proto := ""
	if p.Proto != 0 {
		proto = fmt.Sprintf(" proto %d", p.Proto)
	}
	return fmt.Sprintf("xfrm src %v dst %v%s dir %s action %s priority %d", p.Src, p.Dst, proto, dirNames[p.Dir], action, p.Priority)
}

// String names the nftables table as nft does ("table inet dmvpn").
func (t TableID) String() string {
	names := map[uint8]string{1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}
	f := names[uint8(t.Family)]
	if f == "" {
		f = fmt.Sprintf("family(%d)", t.Family)
	}
	return "table " + f + " " + t.Name
}

// Normal returns the rule in the form the kernel reports it: the
// defaults filled in (lookup main, a full mask), the fields its action
// does not use cleared, the prefixes masked. The Manager compares rules
// in this form; an in-memory kernel stores them so.
func (r Rule) Normal() Rule { return r.normal() }

// normal is Normal.
func (r Rule) normal() Rule {
	if r.Action == 0 {
		r.Action = Lookup
	}
	if r.Action != Lookup {
		r.Table = 0
	} else if r.Table == 0 {
		r.Table = Main
	}
	if r.Action != Goto {
		r.Goto = 0
	}
	if r.Mask == 0 {
		r.Mask = 0xffffffff
	}
	r.Src, r.Dst = r.Src.Masked(), r.Dst.Masked()
	if !r.Suppress {
		r.SuppressPrefixLen = 0
	}
	return r
}

func (r Route) family() Family {
	if r.Dst.Addr().Is4() {
		return IPv4
	}
	return IPv6
}

// normal returns the route in the form compared with the kernel's: table
// 0 is main, an IPv6 metric 0 is the kernel's 1024, next hops sorted,
// weights only on multipath next hops.
func (r Route) normal() Route {
	if r.Table == 0 {
		r.Table = Main
	}
	if r.Metric == 0 && r.Dst.Addr().Is6() {
		r.Metric = ip6DefaultMetric
	}
	r.Dst = r.Dst.Masked()
	r.NextHops = slices.Clone(r.NextHops)
	for i := range r.NextHops {
		h := &r.NextHops[i]
		if len(r.NextHops) == 1 {
			h.Weight = 0
		} else if h.Weight == 0 {
			h.Weight = 1
		}
	}
	slices.SortFunc(r.NextHops, func(a, b NextHop) int {
		if c := a.Gw.Compare(b.Gw); c != 0 {
			return c
		}
		return a.Index - b.Index
	})
	return r
}

// routeKey is the kernel's key of a route.
type routeKey struct {
	table  int
	dst    netip.Prefix
	metric int
}

// ip6DefaultMetric is the metric the kernel gives an IPv6 route added
// with none.
const ip6DefaultMetric = 1024

func (r Route) key() routeKey {
	r = Route{Table: r.Table, Dst: r.Dst, Metric: r.Metric}.normal()
	return routeKey{r.Table, r.Dst, r.Metric}
}

// same reports whether two routes are equal as the kernel holds them
// (next hops compared by interface index).
func (r Route) same(o Route) bool {
	a, b := r.normal(), o.normal()
	if a.key() != b.key() || a.Type != b.Type || a.Src != b.Src || a.MTU != b.MTU || len(a.NextHops) != len(b.NextHops) {
		return false
	}
	for i := range a.NextHops {
		x, y := a.NextHops[i], b.NextHops[i]
		if x.Gw != y.Gw || x.Index != y.Index || x.Onlink != y.Onlink || x.Weight != y.Weight {
			return false
		}
	}
	return true
}

// xfrmKey is the kernel's key of a policy without templates.
type xfrmKey struct {
	dir      XfrmDir
	src, dst netip.Prefix
	proto    int
}

func (p XfrmPolicy) normal() XfrmPolicy {
	p.Src, p.Dst = p.Src.Masked(), p.Dst.Masked()
	return p
}

func (p XfrmPolicy) key() xfrmKey {
	p = p.normal()
	return xfrmKey{p.Dir, p.Src, p.Dst, p.Proto}
}
