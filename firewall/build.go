package firewall

import (
	"fmt"
	"slices"
	"strings"
)

// Ports of the services the policy knows.
const (
	PortIKE     = 500
	PortIKENATT = 4500
	PortBGP     = 179
)

// Build compiles a policy into the dmvpn table: awall's DMVPN policies
// (dmvpn.json, clampmss.json, mark.json, internet-host.json) as one
// nftables table.
//
//   - input (policy drop; the last rule counts what it drops): loopback;
//     the management ports never from the internet zone; GRE only under
//     IPsec (kernel: a secpath; userspace: out of charon's TUN; without
//     IPsec: from the internet zone), every other GRE dropped and counted;
//     BGP only on the tunnel — all of these before the connection state,
//     which cannot tell GRE in clear from the replies to the router's own;
//     then established, IKE, ESP and path-MTU ICMP from the internet
//     zone, ping and IPv6 neighbour discovery, the user's rules to the
//     router, everything from the LAN.
//   - forward (policy drop): the MSS of TCP SYNs clamped to the tunnel's
//     path MTU both ways, established, invalid dropped, the user's rules,
//     then the default zone policy: LAN ↔ tunnel, LAN → internet, LAN ↔
//     LAN, and on hubs tunnel → tunnel. A hub does not drop tunnel →
//     tunnel as invalid: with several hubs a flow's request and its reply
//     may cross different hubs (Cisco's zone-based firewall likewise
//     passes traffic within one zone uninspected, and awall accepts by
//     zone whatever the connection state).
//   - output (policy accept): with IPsec, GRE leaves only under it.
//   - the uplinks' marks and NAT (see Uplinks).
//
// The baseline (Config.Baseline) keeps only the protective part: input
// and forward accept by policy, input holds the management, GRE and BGP
// rules, forward the MSS clamp.
func Build(p Policy) (*Ruleset, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	b := &builder{p: &p, inet: p.internet()}
	rs := &Ruleset{}
	if len(b.inet) > 0 {
		rs.Sets = append(rs.Sets, Set{Name: setInternet, Names: b.inet})
	}
	if len(p.LAN) > 0 {
		rs.Sets = append(rs.Sets, Set{Name: setLAN, Names: p.LAN})
	} else {
		not := append([]string{"lo", p.Tunnel}, b.inet...)
		if p.IPsecTUN != "" {
			not = append(not, p.IPsecTUN)
		}
		rs.Sets = append(rs.Sets, Set{Name: setNotLAN, Names: not})
	}
	if p.Baseline {
		rs.Chains = append(rs.Chains, b.baselineInput(), b.baselineForward())
	} else {
		rs.Chains = append(rs.Chains, b.input(), b.forward())
	}
	if out := b.output(); len(out.Rules) > 0 {
		rs.Chains = append(rs.Chains, out)
	}
	rs.Chains = append(rs.Chains, b.marks()...)
	if nat := b.nat(); len(nat.Rules) > 0 {
		rs.Chains = append(rs.Chains, nat)
	}
	if err := rs.Validate(); err != nil {
		return nil, err
	}
	return rs, nil
}

// The zones' named sets.
const (
	setInternet = "internet"
	setLAN      = "lan"
	// setNotLAN is what is not LAN when the LAN zone is every other
	// interface: loopback, the tunnel, the internet zone, charon's TUN.
	setNotLAN = "not_lan"
)

type builder struct {
	p    *Policy
	inet []string
}

// Match constructors.

func iif(names ...string) Match { return Match{Kind: MatchIIFName, Names: names} }
func oif(names ...string) Match { return Match{Kind: MatchOIFName, Names: names} }
func notIIF(names ...string) Match {
	return Match{Kind: MatchIIFName, Names: names, Neg: true}
}
func notOIF(names ...string) Match {
	return Match{Kind: MatchOIFName, Names: names, Neg: true}
}
func l4(protos ...uint32) Match { return Match{Kind: MatchL4Proto, Values: protos} }
func dport(proto uint8, ports ...uint32) Match {
	return Match{Kind: MatchDPort, Proto: proto, Values: ports}
}
func ctState(bits uint32) Match   { return Match{Kind: MatchCtState, Values: []uint32{bits}} }
func icmp6(types ...uint32) Match { return Match{Kind: MatchICMPv6, Values: types} }

func rule(name, comment string, action ActionKind, ms ...Match) Rule {
	return Rule{Name: name, Comment: comment, Match: ms, Action: Action{Kind: action}}
}

// fromLAN matches packets from the LAN zone.
func (b *builder) fromLAN() Match {
	if len(b.p.LAN) > 0 {
		return Match{Kind: MatchIIFName, Set: setLAN}
	}
	return Match{Kind: MatchIIFName, Set: setNotLAN, Neg: true}
}

// toLAN matches packets forwarded to the LAN zone.
func (b *builder) toLAN() Match {
	if len(b.p.LAN) > 0 {
		return Match{Kind: MatchOIFName, Set: setLAN}
	}
	return Match{Kind: MatchOIFName, Set: setNotLAN, Neg: true}
}

func fromInternet() Match { return Match{Kind: MatchIIFName, Set: setInternet} }
func toInternet() Match   { return Match{Kind: MatchOIFName, Set: setInternet} }

func (b *builder) from(z Zone) []Match {
	switch z {
	case ZoneInternet:
		return []Match{fromInternet()}
	case ZoneTunnel:
		return []Match{iif(b.p.Tunnel)}
	case ZoneLAN:
		return []Match{b.fromLAN()}
	}
	return nil
}

func (b *builder) to(z Zone) []Match {
	switch z {
	case ZoneInternet:
		return []Match{toInternet()}
	case ZoneTunnel:
		return []Match{oif(b.p.Tunnel)}
	case ZoneLAN:
		return []Match{b.toLAN()}
	}
	return nil
}

// protect adds the input rules that keep DMVPN's own traffic safe: the
// management ports never from the internet zone, GRE only under IPsec,
// BGP only on the tunnel.
func (b *builder) protect(add func(Rule)) {
	p := b.p
	if len(p.ManagementPorts) > 0 && len(b.inet) > 0 {
		add(rule("in_management", "control API and metrics never from the internet", Drop,
			fromInternet(), dport(ProtoTCP, ports(p.ManagementPorts)...)))
	}
	switch p.IPsec {
	case IPsecKernel:
		add(rule("in_gre_ipsec", "GRE that an IPsec SA decrypted", Accept, l4(ProtoGRE), Match{Kind: MatchIPsec}))
	case IPsecUserspace:
		if p.IPsecTUN != "" {
			add(rule("in_gre_ipsec", "GRE out of charon's TUN (decrypted by libipsec)", Accept, iif(p.IPsecTUN), l4(ProtoGRE)))
		}
	default:
		if len(b.inet) == 0 {
			// The baseline without IPsec: GRE from anywhere.
			break
		}
		add(rule("in_gre", "GRE from the internet (no IPsec configured)", Accept, fromInternet(), l4(ProtoGRE)))
	}
	if p.IPsec != IPsecOff || len(b.inet) > 0 {
		add(rule("in_gre_clear", "GRE without IPsec", Drop, l4(ProtoGRE)))
	}
	add(rule("in_bgp", "BGP on the tunnel", Accept, iif(p.Tunnel), dport(ProtoTCP, PortBGP)))
	add(rule("in_bgp_other", "BGP only on the tunnel", Drop, dport(ProtoTCP, PortBGP)))
}

// clamp adds the forward rules that clamp the MSS of TCP SYNs to the
// tunnel's path MTU both ways (awall's clampmss).
func (b *builder) clamp(add func(Rule)) {
	p := b.p
	syn := Match{Kind: MatchTCPSyn}
	add(rule("fwd_mss_out", "clamp the MSS into the tunnel to its path MTU", ClampMSSToRoute, oif(p.Tunnel), syn))
	for _, f := range []struct {
		name, what string
		proto      uint32
		hdrs       int
	}{{"fwd_mss_in", "IPv4", NFProtoIPv4, 40}, {"fwd_mss_in6", "IPv6", NFProtoIPv6, 60}} {
		mss := uint32(p.TunnelMTU - f.hdrs)
		r := rule(f.name, fmt.Sprintf("clamp the MSS out of the tunnel to its MTU %d less %d (%s)", p.TunnelMTU, f.hdrs, f.what), ClampMSS,
			iif(p.Tunnel), Match{Kind: MatchNFProto, Values: []uint32{f.proto}}, syn, Match{Kind: MatchMSSAbove, Value: mss})
		r.Action.Value = mss
		add(r)
	}
}

// baselineInput is the baseline's input chain: the protective rules, and
// everything else accepted by policy.
func (b *builder) baselineInput() Chain {
	c := Chain{Name: "input", Type: "filter", Hook: "input", Priority: PriorityFilter}
	b.protect(func(r Rule) { c.Rules = append(c.Rules, r) })
	return c
}

// baselineForward is the baseline's forward chain: the MSS clamp, and
// everything accepted by policy.
func (b *builder) baselineForward() Chain {
	c := Chain{Name: "forward", Type: "filter", Hook: "forward", Priority: PriorityFilter}
	b.clamp(func(r Rule) { c.Rules = append(c.Rules, r) })
	return c
}

func (b *builder) input() Chain {
	p := b.p
	c := Chain{Name: "input", Type: "filter", Hook: "input", Priority: PriorityFilter, Drop: true}
	add := func(r Rule) { c.Rules = append(c.Rules, r) }
	// GRE, BGP and the management ports are judged before the connection
	// state: conntrack takes GRE injected in clear for a reply of the
	// router's own GRE to that peer (established), whatever IPsec did.
	add(rule("in_loopback", "the router's own loopback", Accept, iif("lo")))
	b.protect(add)
	add(rule("in_established", "replies and related ICMP", Accept, ctState(CtStateEstablished|CtStateRelated)))
	add(rule("in_invalid", "no connection state", Drop, ctState(CtStateInvalid)))
	add(rule("in_ike", "IKE and NAT-T from the internet", Accept, fromInternet(), dport(ProtoUDP, PortIKE, PortIKENATT)))
	add(rule("in_esp", "ESP from the internet", Accept, fromInternet(), l4(ProtoESP)))
	add(rule("in_pmtu", "path MTU discovery from the internet", Accept, fromInternet(),
		Match{Kind: MatchICMP, Code: true, Values: []uint32{ICMPUnreachable, ICMPCodeFragNeed}}))
	add(rule("in_pmtu6", "path MTU discovery from the internet (IPv6)", Accept, fromInternet(), icmp6(ICMPv6TooBig)))
	add(rule("in_nd", "IPv6 neighbour and router discovery", Accept, icmp6(ICMPv6RouterSol, ICMPv6RouterAdv, ICMPv6NeighSol, ICMPv6NeighAdv)))
	add(rule("in_ping", "ping", Accept, Match{Kind: MatchICMP, Values: []uint32{ICMPEchoRequest}}))
	add(rule("in_ping6", "ping (IPv6)", Accept, icmp6(ICMPv6EchoRequest)))
	for i, r := range p.Rules {
		if r.To == ZoneLocal {
			add(b.userRule(i, r))
		}
	}
	add(rule("in_lan", "the LAN may reach the router", Accept, b.fromLAN()))
	add(rule("in_drop", "policy: drop the rest", Drop))
	return c
}

func (b *builder) forward() Chain {
	p := b.p
	c := Chain{Name: "forward", Type: "filter", Hook: "forward", Priority: PriorityFilter, Drop: true}
	add := func(r Rule) { c.Rules = append(c.Rules, r) }
	b.clamp(add)
	add(rule("fwd_established", "replies and related ICMP", Accept, ctState(CtStateEstablished|CtStateRelated)))
	if p.Hub {
		// Tunnel to tunnel is not judged by connection state on a hub:
		// with two hubs a request may cross one and its reply the other,
		// and a reply whose request this hub never saw (a SYN-ACK, an
		// echo reply) is invalid to conntrack. Only what enters or leaves
		// through another interface must have a connection.
		add(rule("fwd_invalid", "no connection state (not spoke to spoke: a hub may see one direction only)", Drop,
			notIIF(p.Tunnel), ctState(CtStateInvalid)))
		add(rule("fwd_invalid_out", "no connection state, into the tunnel from another interface", Drop,
			notOIF(p.Tunnel), ctState(CtStateInvalid)))
	} else {
		add(rule("fwd_invalid", "no connection state", Drop, ctState(CtStateInvalid)))
	}
	for i, r := range p.Rules {
		if r.To != ZoneLocal {
			add(b.userRule(i, r))
		}
	}
	if p.Hub {
		add(rule("fwd_tunnel_tunnel", "spoke to spoke through the hub", Accept, iif(p.Tunnel), oif(p.Tunnel)))
	}
	add(rule("fwd_lan_tunnel", "LAN to the tunnel", Accept, b.fromLAN(), oif(p.Tunnel)))
	add(rule("fwd_tunnel_lan", "tunnel to the LAN", Accept, iif(p.Tunnel), b.toLAN()))
	add(rule("fwd_lan_internet", "LAN to the internet", Accept, b.fromLAN(), toInternet()))
	add(rule("fwd_lan_lan", "LAN to LAN", Accept, b.fromLAN(), b.toLAN()))
	add(rule("fwd_drop", "policy: drop the rest", Drop))
	return c
}

func (b *builder) output() Chain {
	p := b.p
	c := Chain{Name: "output", Type: "filter", Hook: "output", Priority: PriorityFilter}
	switch p.IPsec {
	case IPsecKernel:
		c.Rules = append(c.Rules, rule("out_gre_clear", "GRE leaves only under IPsec", Drop, l4(ProtoGRE), Match{Kind: MatchNoIPsecRoute}))
	case IPsecUserspace:
		ms := []Match{l4(ProtoGRE)}
		if p.IPsecTUN != "" {
			ms = append(ms, notOIF(p.IPsecTUN))
		}
		c.Rules = append(c.Rules, rule("out_gre_clear", "GRE leaves only into charon's TUN", Drop, ms...))
	}
	return c
}

// marks returns the uplinks' route-track chains (none without marks).
func (b *builder) marks() []Chain {
	u := b.p.Uplinks
	mask := u.Mask()
	var marked []Uplink
	for _, up := range u.List {
		if up.Mark != 0 {
			marked = append(marked, up)
		}
	}
	if len(marked) == 0 {
		return nil
	}
	pre := Chain{Name: "mark_pre", Type: "filter", Hook: "prerouting", Priority: PriorityMangle}
	out := Chain{Name: "mark_out", Type: "route", Hook: "output", Priority: PriorityMangle}
	post := Chain{Name: "mark_post", Type: "filter", Hook: "postrouting", Priority: PriorityMangle}
	set := func(kind ActionKind, v uint32) Action { return Action{Kind: kind, Mask: mask, Value: v} }
	for _, up := range marked {
		r := rule("mark_new_"+up.Name, "connections in through uplink "+up.Name+" are its", Continue, iif(up.Interface), ctState(CtStateNew))
		r.Action = set(SetCtMark, up.Mark)
		pre.Rules = append(pre.Rules, r)
	}
	for _, up := range marked {
		has := Match{Kind: MatchCtMark, Mask: mask, Value: up.Mark}
		r := rule("mark_restore_"+up.Name, "packets of uplink "+up.Name+"'s connections take its table", Continue, Match{Kind: MatchIIFName, Set: setInternet, Neg: true}, has)
		r.Action = set(SetMark, up.Mark)
		pre.Rules = append(pre.Rules, r)
		r = rule("mark_out_"+up.Name, "the router's unmarked packets of uplink "+up.Name+"'s connections take its table", Continue,
			Match{Kind: MatchMark, Mask: 0xffffffff, Value: 0}, has)
		r.Action = set(SetMark, up.Mark)
		out.Rules = append(out.Rules, r)
		r = rule("mark_save_"+up.Name, "a connection stays on uplink "+up.Name+", which it left through first", Continue,
			oif(up.Interface), Match{Kind: MatchCtMark, Mask: mask, Value: 0})
		r.Action = set(SetCtMark, up.Mark)
		post.Rules = append(post.Rules, r)
	}
	return []Chain{pre, out, post}
}

// nat returns the uplinks' masquerade chain.
func (b *builder) nat() Chain {
	c := Chain{Name: "nat_post", Type: "nat", Hook: "postrouting", Priority: PrioritySrcNAT}
	for _, up := range b.p.Uplinks.List {
		if !up.Masquerade {
			continue
		}
		ms := []Match{oif(up.Interface)}
		if len(b.p.LAN) == 0 {
			// Not the router's own packets (no input interface).
			ms = append(ms, Match{Kind: MatchIIFPresent})
		}
		ms = append(ms, b.fromLAN())
		c.Rules = append(c.Rules, rule("nat_"+up.Name, "masquerade the LAN behind uplink "+up.Name, Masquerade, ms...))
	}
	return c
}

// userRule compiles the configuration's rule i.
func (b *builder) userRule(i int, r UserRule) Rule {
	ms := b.from(r.From)
	ms = append(ms, b.to(r.To)...)
	switch {
	case len(r.Ports) > 0:
		ms = append(ms, dport(r.Protocol, ports(r.Ports)...))
	case r.Protocol != 0:
		ms = append(ms, l4(uint32(r.Protocol)))
	}
	if r.Source.IsValid() {
		ms = append(ms, Match{Kind: MatchSAddr, Prefix: r.Source})
	}
	if r.Destination.IsValid() {
		ms = append(ms, Match{Kind: MatchDAddr, Prefix: r.Destination})
	}
	act := map[Verdict]ActionKind{VerdictAccept: Accept, VerdictDrop: Drop, VerdictReject: Reject}[r.Action]
	where := r.Where
	if where == "" {
		where = fmt.Sprintf("rule %d", i+1)
	}
	return rule(fmt.Sprintf("user_%d", i+1), where+": "+r.Summary(), act, ms...)
}

// Summary describes a user rule in one line ("lan -> local tcp 22 accept").
func (r UserRule) Summary() string {
	s := []string{string(r.From), "->", string(r.To)}
	if r.Protocol != 0 {
		s = append(s, protoName(uint32(r.Protocol)))
	}
	if len(r.Ports) > 0 {
		ps := make([]string, len(r.Ports))
		for i, p := range r.Ports {
			ps[i] = fmt.Sprint(p)
		}
		s = append(s, strings.Join(ps, ","))
	}
	if r.Source.IsValid() {
		s = append(s, "from", r.Source.String())
	}
	if r.Destination.IsValid() {
		s = append(s, "to", r.Destination.String())
	}
	return strings.Join(append(s, string(r.Action)), " ")
}

func ports(ps []uint16) []uint32 {
	out := make([]uint32, 0, len(ps))
	for _, p := range ps {
		if !slices.Contains(out, uint32(p)) {
			out = append(out, uint32(p))
		}
	}
	return out
}
