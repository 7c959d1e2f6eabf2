//go:build linux

package host

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// linuxKernel is this host's kernel, in the network namespace of the
// calling thread at NewKernel (each request opens its own socket there).
type linuxKernel struct {
	h          *netlink.Handle
	sysctlRoot string
}

// NewKernel returns this host's kernel: rules, routes, links and xfrm
// policies over netlink, sysctls under /proc/sys, nftables over its
// netlink family.
func NewKernel() (Kernel, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE, unix.NETLINK_XFRM)
	if err != nil {
		return nil, fmt.Errorf("host: netlink: %w", err)
	}
	return &linuxKernel{h: h, sysctlRoot: "/proc/sys"}, nil
}

func afOf(f Family) int {
	if f == IPv6 {
		return unix.AF_INET6
	}
	return unix.AF_INET
}

// Rules lists the rules with a dump of its own: the netlink package's
// RuleList drops each rule's action (nop, prohibit, …).
func (k *linuxKernel) Rules(ctx context.Context, f Family) ([]Rule, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	req := nl.NewNetlinkRequest(unix.RTM_GETRULE, unix.NLM_F_DUMP|unix.NLM_F_REQUEST)
	req.AddData(nl.NewIfInfomsg(afOf(f)))
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWRULE)
	if err != nil {
		return nil, err
	}
	var out []Rule
	for _, m := range msgs {
		r, err := parseRule(m)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

func parseRule(m []byte) (Rule, error) {
	msg := nl.DeserializeRtMsg(m)
	attrs, err := nl.ParseRouteAttr(m[msg.Len():])
	if err != nil {
		return Rule{}, err
	}
	r := Rule{Family: IPv4, Action: RuleAction(msg.Type), Table: int(msg.Table), Invert: msg.Flags&netlink.FibRuleInvert != 0}
	if msg.Family == unix.AF_INET6 {
		r.Family = IPv6
	}
	pfx := func(b []byte, bits uint8) netip.Prefix {
		a, _ := netip.AddrFromSlice(b)
		return netip.PrefixFrom(a, int(bits))
	}
	for _, a := range attrs {
		v := a.Value
		u32 := func() uint32 {
			if len(v) < 4 {
				return 0
			}
			return nl.NativeEndian().Uint32(v)
		}
		switch a.Attr.Type {
		case nl.FRA_TABLE:
			r.Table = int(u32())
		case nl.FRA_PRIORITY:
			r.Priority = int(u32())
		case nl.FRA_GOTO:
			r.Goto = int(u32())
		case nl.FRA_SRC:
			r.Src = pfx(v, msg.Src_len)
		case nl.FRA_DST:
			r.Dst = pfx(v, msg.Dst_len)
		case nl.FRA_FWMARK:
			r.Mark = u32()
		case nl.FRA_FWMASK:
			r.Mask = u32()
		case nl.FRA_IP_PROTO:
			if len(v) > 0 {
				r.IPProto = int(v[0])
			}
		case nl.FRA_IIFNAME:
			r.IifName = cstring(v)
		case nl.FRA_OIFNAME:
			r.OifName = cstring(v)
		case nl.FRA_SUPPRESS_PREFIXLEN:
			if n := u32(); n != 0xffffffff {
				r.Suppress, r.SuppressPrefixLen = true, int(n)
			}
		}
	}
	if r.Action != Lookup {
		r.Table = 0
	}
	return r, nil
}

func cstring(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// ruleRequest builds an RTM_NEWRULE or RTM_DELRULE for r with every
// attribute it has, so a delete matches exactly that rule.
func ruleRequest(typ int, flags int, r Rule) *nl.NetlinkRequest {
	r = r.normal()
	req := nl.NewNetlinkRequest(typ, flags|unix.NLM_F_ACK)
	msg := nl.NewRtMsg()
	msg.Family = uint8(afOf(r.Family))
	msg.Protocol, msg.Scope, msg.Type = unix.RTPROT_BOOT, unix.RT_SCOPE_UNIVERSE, uint8(r.Action)
	if r.Invert {
		msg.Flags |= netlink.FibRuleInvert
	}
	msg.Table = unix.RT_TABLE_UNSPEC
	if r.Action == Lookup && r.Table < 256 {
		msg.Table = uint8(r.Table)
	}
	u32 := func(v uint32) []byte { b := make([]byte, 4); nl.NativeEndian().PutUint32(b, v); return b }
	var attrs []*nl.RtAttr
	if r.Src.IsValid() {
		msg.Src_len = uint8(r.Src.Bits())
		attrs = append(attrs, nl.NewRtAttr(nl.FRA_SRC, r.Src.Addr().AsSlice()))
	}
	if r.Dst.IsValid() {
		msg.Dst_len = uint8(r.Dst.Bits())
		attrs = append(attrs, nl.NewRtAttr(nl.FRA_DST, r.Dst.Addr().AsSlice()))
	}
	req.AddData(msg)
	for _, a := range attrs {
		req.AddData(a)
	}
	req.AddData(nl.NewRtAttr(nl.FRA_PRIORITY, u32(uint32(r.Priority))))
	if r.Action == Lookup {
		req.AddData(nl.NewRtAttr(nl.FRA_TABLE, u32(uint32(r.Table))))
		if r.Suppress {
			req.AddData(nl.NewRtAttr(nl.FRA_SUPPRESS_PREFIXLEN, u32(uint32(r.SuppressPrefixLen))))
		}
	}
	if r.Action == Goto {
		req.AddData(nl.NewRtAttr(nl.FRA_GOTO, u32(uint32(r.Goto))))
	}
	if r.Mark != 0 || r.Mask != 0xffffffff {
		req.AddData(nl.NewRtAttr(nl.FRA_FWMARK, u32(r.Mark)))
		req.AddData(nl.NewRtAttr(nl.FRA_FWMASK, u32(r.Mask)))
	}
	if r.IPProto != 0 {
		req.AddData(nl.NewRtAttr(nl.FRA_IP_PROTO, []byte{uint8(r.IPProto)}))
	}
	if r.IifName != "" {
		req.AddData(nl.NewRtAttr(nl.FRA_IIFNAME, []byte(r.IifName+"\x00")))
	}
	if r.OifName != "" {
		req.AddData(nl.NewRtAttr(nl.FRA_OIFNAME, []byte(r.OifName+"\x00")))
	}
	return req
}

func (k *linuxKernel) AddRule(ctx context.Context, r Rule) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	_, err := ruleRequest(unix.RTM_NEWRULE, unix.NLM_F_CREATE|unix.NLM_F_EXCL, r).Execute(unix.NETLINK_ROUTE, 0)
	return err
}

func (k *linuxKernel) DelRule(ctx context.Context, r Rule) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	_, err := ruleRequest(unix.RTM_DELRULE, 0, r).Execute(unix.NETLINK_ROUTE, 0)
	return err
}

func (k *linuxKernel) Routes(ctx context.Context, f Family, protocol int) ([]Route, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out, err := k.listRoutes(f, &netlink.Route{Protocol: netlink.RouteProtocol(protocol)},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, err
	}
	names := map[int]string{}
	if links, err := k.h.LinkList(); err == nil {
		for _, l := range links {
			names[l.Attrs().Index] = l.Attrs().Name
		}
	}
	for _, x := range out {
		for i := range x.NextHops {
			x.NextHops[i].Dev = names[x.NextHops[i].Index]
		}
	}
	return out, nil
}

func (k *linuxKernel) RoutesAt(ctx context.Context, table int, dst netip.Prefix) ([]Route, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if table == 0 {
		table = Main
	}
	f := IPv4
	if dst.Addr().Is6() {
		f = IPv6
	}
	filter := &netlink.Route{Table: table, Dst: &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), dst.Addr().BitLen())}}
	return k.listRoutes(f, filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_DST)
}

func (k *linuxKernel) TableRoutes(ctx context.Context, f Family, table int) ([]Route, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if table == 0 {
		table = Main
	}
	return k.listRoutes(f, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
}

// listRoutes dumps the routes of family f that filter matches on mask's
// fields (a dump the kernel interrupted is taken as it came).
func (k *linuxKernel) listRoutes(f Family, filter *netlink.Route, mask uint64) ([]Route, error) {
	rs, err := k.h.RouteListFiltered(afOf(f), filter, mask)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, err
	}
	out := make([]Route, 0, len(rs))
	for _, r := range rs {
		out = append(out, fromNetlinkRoute(r))
	}
	return out, nil
}

// fromNetlinkRoute converts a route of the netlink package.
func fromNetlinkRoute(r netlink.Route) Route {
	x := Route{Table: r.Table, Metric: r.Priority, Type: RouteType(r.Type), MTU: r.MTU, Protocol: int(r.Protocol)}
	if x.Type == unix.RTN_UNICAST {
		x.Type = Unicast
	}
	if r.Dst != nil {
		a, _ := netip.AddrFromSlice(r.Dst.IP)
		ones, _ := r.Dst.Mask.Size()
		x.Dst = netip.PrefixFrom(a.Unmap(), ones)
	}
	if a, ok := netip.AddrFromSlice(r.Src); ok {
		x.Src = a.Unmap()
	}
	gw := func(ip net.IP) netip.Addr {
		a, _ := netip.AddrFromSlice(ip)
		return a.Unmap()
	}
	if len(r.MultiPath) > 0 {
		for _, h := range r.MultiPath {
			x.NextHops = append(x.NextHops, NextHop{Gw: gw(h.Gw), Index: h.LinkIndex, Onlink: h.Flags&unix.RTNH_F_ONLINK != 0, Weight: h.Hops + 1})
		}
	} else if r.LinkIndex != 0 || r.Gw != nil {
		x.NextHops = []NextHop{{Gw: gw(r.Gw), Index: r.LinkIndex, Onlink: r.Flags&unix.RTNH_F_ONLINK != 0}}
	}
	return x.normal()
}

// toNetlinkRoute converts a route whose next hops carry indexes.
func toNetlinkRoute(r Route) *netlink.Route {
	r = r.normal()
	nr := &netlink.Route{Table: r.Table, Priority: r.Metric, Protocol: netlink.RouteProtocol(r.Protocol), MTU: r.MTU,
		Dst:    &net.IPNet{IP: r.Dst.Addr().AsSlice(), Mask: net.CIDRMask(r.Dst.Bits(), r.Dst.Addr().BitLen())},
		Family: afOf(r.family()), Type: int(r.Type), Scope: netlink.SCOPE_UNIVERSE}
	if r.Type == Unicast {
		nr.Type = unix.RTN_UNICAST
	}
	if r.Src.IsValid() {
		nr.Src = r.Src.AsSlice()
	}
	ip := func(a netip.Addr) net.IP {
		if !a.IsValid() {
			return nil
		}
		return a.AsSlice()
	}
	flags := func(h NextHop) int {
		if h.Onlink {
			return unix.RTNH_F_ONLINK
		}
		return 0
	}
	switch len(r.NextHops) {
	case 0:
	case 1:
		h := r.NextHops[0]
		nr.LinkIndex, nr.Gw, nr.Flags = h.Index, ip(h.Gw), flags(h)
		if !h.Gw.IsValid() {
			nr.Scope = netlink.SCOPE_LINK
		}
	default:
		for _, h := range r.NextHops {
			nr.MultiPath = append(nr.MultiPath, &netlink.NexthopInfo{LinkIndex: h.Index, Gw: ip(h.Gw), Hops: h.Weight - 1, Flags: flags(h)})
		}
	}
	return nr
}

func (k *linuxKernel) ReplaceRoute(ctx context.Context, r Route) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return k.h.RouteReplace(toNetlinkRoute(r))
}

func (k *linuxKernel) DelRoute(ctx context.Context, r Route) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	nr := toNetlinkRoute(r)
	// The key and the protocol select the route; next hops need not match.
	nr.LinkIndex, nr.Gw, nr.MultiPath, nr.Flags, nr.Src, nr.MTU = 0, nil, nil, 0, nil, 0
	return k.h.RouteDel(nr)
}

func (k *linuxKernel) XfrmPolicies(ctx context.Context) ([]XfrmPolicy, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ps, err := k.h.XfrmPolicyList(netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	var out []XfrmPolicy
	for _, p := range ps {
		if len(p.Tmpls) > 0 || p.Src == nil || p.Dst == nil || p.Ifid != 0 || p.Mark != nil {
			continue // an SA's policy, not a catch-all
		}
		pfx := func(n *net.IPNet) netip.Prefix {
			a, _ := netip.AddrFromSlice(n.IP)
			ones, _ := n.Mask.Size()
			return netip.PrefixFrom(a.Unmap(), ones)
		}
		out = append(out, XfrmPolicy{Dir: XfrmDir(p.Dir), Src: pfx(p.Src), Dst: pfx(p.Dst), Proto: int(p.Proto),
			Priority: uint32(p.Priority), Action: XfrmAction(p.Action)})
	}
	return out, nil
}

func toNetlinkPolicy(p XfrmPolicy) *netlink.XfrmPolicy {
	p = p.normal()
	n := func(x netip.Prefix) *net.IPNet {
		return &net.IPNet{IP: x.Addr().AsSlice(), Mask: net.CIDRMask(x.Bits(), x.Addr().BitLen())}
	}
	return &netlink.XfrmPolicy{Src: n(p.Src), Dst: n(p.Dst), Proto: netlink.Proto(p.Proto), Dir: netlink.Dir(p.Dir),
		Priority: int(p.Priority), Action: netlink.PolicyAction(p.Action)}
}

func (k *linuxKernel) UpdateXfrmPolicy(ctx context.Context, p XfrmPolicy) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return k.h.XfrmPolicyUpdate(toNetlinkPolicy(p))
}

func (k *linuxKernel) DelXfrmPolicy(ctx context.Context, p XfrmPolicy) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return k.h.XfrmPolicyDel(toNetlinkPolicy(p))
}

func (k *linuxKernel) ReadSysctl(key string) (string, error) {
	b, err := os.ReadFile(filepath.Join(k.sysctlRoot, key))
	return string(b), err
}

func (k *linuxKernel) WriteSysctl(key, value string) error {
	return os.WriteFile(filepath.Join(k.sysctlRoot, key), []byte(value), 0o644)
}

func (k *linuxKernel) LinkIndex(name string) (int, error) {
	l, err := k.h.LinkByName(name)
	if err != nil {
		return 0, fmt.Errorf("interface %s: %w", name, err)
	}
	return l.Attrs().Index, nil
}
