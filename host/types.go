package host

import (
	"net/netip"
)

// Family is an address family of rules and routes.
type Family uint8

// Families.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

// Main is the kernel's main routing table.
const Main = 254

// Owner names what a client owns in the kernel. Whatever matches these
// identifiers is the client's: Set deletes what it does not desire, Close
// deletes all of it. Identifiers may not overlap between clients.
type Owner struct {
	// Name names the client in errors ("ipsec", "bgp").
	Name string
	// RulePriorities are the policy rule priorities the client owns, in
	// both families. 0, 32766 and 32767 (the kernel's own) are refused.
	RulePriorities []int
	// RouteProtocol is the route protocol number (rtm_protocol) of the
	// client's routes, in every table; 0 for a client without routes.
	// The kernel's numbers (1-4: redirect, kernel, boot, static) are
	// refused.
	RouteProtocol int
	// XfrmPriorities are the xfrm policy priorities the client owns.
	XfrmPriorities []uint32
	// Tables are the nftables tables the client owns.
	Tables []TableID
}

// Config is a client's desired state. The zero Config desires nothing.
type Config struct {
	// Rules are added in this order (a goto's target before the goto).
	Rules []Rule
	// Routes carry the owner's protocol (Route.Protocol is ignored).
	Routes []Route
	// Xfrm lists the xfrm policies.
	Xfrm []XfrmPolicy
	// Sysctls lists the sysctls to set.
	Sysctls []Sysctl
	// Tables lists the whole nftables tables.
	Tables []NFTable
}

// RuleAction is what a policy rule does (FR_ACT_*).
type RuleAction uint8

// Rule actions.
const (
	Lookup      RuleAction = 1 // look the route up in Table
	Goto        RuleAction = 2 // jump to the rule at priority Goto
	Nop         RuleAction = 3
	Blackhole   RuleAction = 6
	Unreachable RuleAction = 7
	Prohibit    RuleAction = 8
)

// Rule is a policy routing rule. The zero value of a selector field
// matches everything.
type Rule struct {
	Family   Family
	Priority int
	Action   RuleAction
	// Table is the table of a Lookup.
	Table int
	// Goto is the target priority of a Goto.
	Goto int
	// Invert negates the selectors ("not").
	Invert bool
	// IPProto selects an IP protocol (47: GRE).
	IPProto int
	// Mark and Mask select a firewall mark (Mask 0 means all bits).
	Mark, Mask uint32
	// Src and Dst select source and destination prefixes.
	Src, Dst netip.Prefix
	// IifName and OifName select the input and output interfaces.
	IifName, OifName string
	// SuppressPrefixLen, when Suppress, rejects a Lookup result whose
	// prefix is this long or shorter.
	Suppress          bool
	SuppressPrefixLen int
}

// RouteType is a route's type (RTN_*).
type RouteType uint8

// Route types. The zero value is a unicast route.
const (
	Unicast          RouteType = 0
	BlackholeRoute   RouteType = 6
	UnreachableRoute RouteType = 7
	ProhibitRoute    RouteType = 8
	ThrowRoute       RouteType = 9
)

// Route is a route. Its key in the kernel is (family, Table, Dst,
// Metric): a desired route replaces, in place, whatever route has that
// key, whoever set it.
type Route struct {
	// Table is the routing table; 0 means Main.
	Table int
	// Dst is the destination (0.0.0.0/0: the default route).
	Dst netip.Prefix
	// Metric is the route's priority (lower wins).
	Metric int
	// Type is the route type (Unicast unless set).
	Type RouteType
	// Src is the preferred source address, when set.
	Src netip.Addr
	// NextHops: one for a plain route, several for a multipath (ECMP)
	// route, none for a blackhole, prohibit, unreachable or throw route.
	NextHops []NextHop
	// MTU is the route's path MTU, when set.
	MTU int
	// Protocol is the route's protocol number: set by the Manager to the
	// owner's on routes it applies, read from the kernel otherwise.
	Protocol int
}

// NextHop is one next hop of a route.
type NextHop struct {
	// Gw is the gateway; invalid for a next hop directly on Dev.
	Gw netip.Addr
	// Dev is the outgoing interface's name; Index may be given instead
	// (routes read from the kernel carry Index).
	Dev   string
	Index int
	// Onlink uses Gw on Dev without requiring a route to it.
	Onlink bool
	// Weight is the multipath weight, 1-256 (0 means 1).
	Weight int
}

// XfrmDir is the direction of an xfrm policy.
type XfrmDir uint8

// Directions (XFRM_POLICY_*).
const (
	XfrmIn  XfrmDir = 0
	XfrmOut XfrmDir = 1
	XfrmFwd XfrmDir = 2
)

// XfrmAction is what an xfrm policy does to packets it selects without a
// template: allow or block.
type XfrmAction uint8

// Actions.
const (
	XfrmAllow XfrmAction = 0
	XfrmBlock XfrmAction = 1
)

// XfrmPolicy is an xfrm policy without templates (a catch-all that blocks
// or allows what no SA's policy covers). Its key in the kernel is (Dir,
// Src, Dst, Proto): a policy with a new Priority or Action replaces the
// old one in place.
type XfrmPolicy struct {
	Dir      XfrmDir
	Src, Dst netip.Prefix
	// Proto selects an IP protocol (47: GRE); 0 selects all.
	Proto    int
	Priority uint32
	Action   XfrmAction
}

// Sysctl is a kernel setting under /proc/sys.
type Sysctl struct {
	// Key is the path under /proc/sys with slashes
	// ("net/ipv4/ip_forward", "net/ipv4/conf/eth0.100/rp_filter").
	Key   string
	Value string
	// AtLeast raises a numeric setting to Value and never lowers it.
	AtLeast bool
	// Optional skips a key the kernel does not have (a setting of the
	// initial network namespace only) instead of failing.
	Optional bool
	// Restore puts back, on Close, the value found before this owner
	// first set it (kept across a crash in Options.StateFile).
	Restore bool
}

// TableFamily is an nftables table family (NFPROTO_*, the values of
// nftables.TableFamily).
type TableFamily uint8

// Table families.
const (
	TableINet   TableFamily = 1
	TableIPv4   TableFamily = 2
	TableNetdev TableFamily = 5
	TableBridge TableFamily = 7
	TableIPv6   TableFamily = 10
)

// TableID names an nftables table.
type TableID struct {
	Family TableFamily
	Name   string
}

// NFTable is a whole nftables table whose content the client supplies.
type NFTable struct {
	TableID
	// Rev identifies the content. The table is replaced when Rev differs
	// from the one this Manager last applied, or the table is missing
	// from the kernel; "" replaces it on every Set.
	Rev string
	// Build adds the table's chains, sets and rules; see NFTBuilder.
	Build NFTBuilder
}
