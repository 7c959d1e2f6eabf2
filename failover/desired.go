package failover

import (
	"cmp"
	"context"
	"net/netip"
	"slices"

	"github.com/opendmvpn/dmvpn/host"
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

// Desired is the kernel state that follows from the uplinks' states: what
// the host-state owner must make true.
type Desired struct {
	Routes  []host.Route
	Rules   []host.Rule
	Sysctls []host.Sysctl
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

// desired computes the kernel state of the uplinks. Next hops are onlink:
// the gateway is on the uplink's link by definition, whatever the table
// holds.
func desired(c Config, vs []view) Desired {
	var d Desired
	rule := func(prio int) host.Rule { return host.Rule{Family: host.IPv4, Priority: prio, Action: host.Lookup} }
	suppress := rule(c.RulePriority)
	suppress.Table, suppress.Suppress, suppress.SuppressPrefixLen = host.Main, true, 0
	d.Rules = append(d.Rules, suppress)
	d.Sysctls = []host.Sysctl{
		{Key: "net/ipv4/fib_multipath_hash_policy", Value: "1", Restore: true},
		{Key: "net/ipv4/fib_multipath_use_neigh", Value: "1", Restore: true},
	}
	var usable []view
	for i, v := range vs {
		d.Sysctls = append(d.Sysctls, host.Sysctl{Key: "net/ipv4/conf/" + v.cfg.Interface + "/rp_filter", Value: "2", Optional: true, Restore: true})
		if !v.usable() {
			continue
		}
		usable = append(usable, v)
		d.Routes = append(d.Routes, host.Route{Table: v.cfg.Table, Dst: defaultRoute, NextHops: []host.NextHop{nextHop(v, 0)}})
		base := c.RulePriority + rulesFirst + rulesPerUplink*i
		src, mark := rule(base), rule(base+1)
		src.Table, src.Src = v.cfg.Table, netip.PrefixFrom(v.addr.Addr(), 32)
		mark.Table, mark.Mark, mark.Mask = v.cfg.Table, v.cfg.Mark, c.MarkMask
		d.Rules = append(d.Rules, src, mark)
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
	main := host.Route{Table: host.Main, Dst: defaultRoute}
	for _, v := range carry {
		w := 0
		if len(carry) > 1 {
			w = v.cfg.Weight
		}
		main.NextHops = append(main.NextHops, nextHop(v, w))
		d.Main = append(d.Main, v.cfg.Name)
	}
	d.Routes = append(d.Routes, main)
	active := carry[0]
	d.Active = active.cfg.Name
	gre := rule(c.RulePriority + 1)
	gre.Table, gre.IPProto = active.cfg.Table, protoGRE
	d.Rules = append(d.Rules, gre)
	d.NBMA = append(d.NBMA, active.addr.Addr())
	for _, v := range usable {
		if v.cfg.Name != active.cfg.Name {
			d.NBMA = append(d.NBMA, v.addr.Addr())
		}
	}
	slices.SortStableFunc(d.Rules, func(a, b host.Rule) int { return cmp.Compare(a.Priority, b.Priority) })
	return d
}

// nextHop is the uplink's gateway as a next hop of weight w (0: a single
// path).
func nextHop(v view, w int) host.NextHop {
	return host.NextHop{Gw: v.gateway, Dev: v.cfg.Interface, Onlink: true, Weight: w}
}

// HostConfig is the desired state as the host-state owner takes it.
func (d Desired) HostConfig() *host.Config {
	return &host.Config{Rules: slices.Clone(d.Rules), Routes: slices.Clone(d.Routes), Sysctls: slices.Clone(d.Sysctls)}
}

// Owner is what the uplinks own in the kernel: the rule priorities of
// MaxUplinks uplinks from c's (see the table above, so a reload can add
// uplinks) and its route protocol.
func (c Config) Owner() host.Owner {
	o := host.Owner{Name: "failover", RouteProtocol: c.Protocol}
	for p := c.RulePriority; p < c.RulePriority+rulesFirst+rulesPerUplink*MaxUplinks; p++ {
		o.RulePriorities = append(o.RulePriorities, p)
	}
	return o
}

// HostClient applies the desired state through a client of the host-state
// owner.
type HostClient struct{ C *host.Client }

// SetUplinks implements Host.
func (h HostClient) SetUplinks(ctx context.Context, d Desired) error {
	return h.C.Set(ctx, d.HostConfig())
}

const protoGRE = 47

var defaultRoute = netip.MustParsePrefix("0.0.0.0/0")
