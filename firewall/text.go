package firewall

import (
	"fmt"
	"strconv"
	"strings"
)

// Text renders the ruleset as `nft list table inet dmvpn` lists it after
// an apply (nft 1.0's spelling): the counters, then the chains with their
// rules, each rule's named counter and comment. It is what `dmvpnctl
// firewall translate` prints for review, and what tests compare with the
// kernel's own listing.
func (rs *Ruleset) Text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {\n", TableName)
	first := true
	sep := func() {
		if !first {
			b.WriteString("\n")
		}
		first = false
	}
	for _, c := range rs.Chains {
		for _, r := range c.Rules {
			sep()
			fmt.Fprintf(&b, "\tcounter %s {\n\t\tpackets 0 bytes 0\n\t}\n", r.Name)
		}
	}
	for _, st := range rs.Sets {
		sep()
		// nft puts each name of a named ifname set on a line of its own.
		fmt.Fprintf(&b, "\tset %s {\n\t\ttype ifname\n\t\telements = { %s }\n\t}\n", st.Name, strings.Join(quoted(st.Names), ",\n\t\t\t     "))
	}
	for _, c := range rs.Chains {
		if !first {
			b.WriteString("\n")
		}
		first = false
		b.WriteString(c.Text())
	}
	b.WriteString("}\n")
	return b.String()
}

// Text renders one chain, indented as inside its table.
func (c *Chain) Text() string {
	var b strings.Builder
	policy := "accept"
	if c.Drop {
		policy = "drop"
	}
	fmt.Fprintf(&b, "\tchain %s {\n\t\ttype %s hook %s priority %s; policy %s;\n", c.Name, c.Type, c.Hook, priorityName(c.Priority, c.Type == "nat"), policy)
	for _, r := range c.Rules {
		b.WriteString("\t\t")
		b.WriteString(r.Text())
		b.WriteString("\n")
	}
	b.WriteString("\t}\n")
	return b.String()
}

// priorityName spells a priority as nft lists it in an inet table.
func priorityName(p int, nat bool) string {
	names := []struct {
		name string
		v    int
	}{{"raw", PriorityRaw}, {"mangle", PriorityMangle}, {"filter", PriorityFilter}}
	if nat {
		names = append(names, struct {
			name string
			v    int
		}{"dstnat", PriorityDstNAT}, struct {
			name string
			v    int
		}{"srcnat", PrioritySrcNAT})
	}
	for _, n := range names {
		switch d := p - n.v; {
		case d == 0:
			return n.name
		case d > 0 && d <= 10:
			return fmt.Sprintf("%s + %d", n.name, d)
		case d < 0 && d >= -10:
			return fmt.Sprintf("%s - %d", n.name, -d)
		}
	}
	return strconv.Itoa(p)
}

// Text renders a rule as nft lists it.
func (r *Rule) Text() string {
	var parts []string
	for _, m := range r.Match {
		parts = append(parts, m.Text())
	}
	parts = append(parts, fmt.Sprintf("counter name %q", r.Name))
	if a := r.Action.Text(); a != "" {
		parts = append(parts, a)
	}
	if r.Comment != "" {
		parts = append(parts, fmt.Sprintf("comment %q", r.Comment))
	}
	return strings.Join(parts, " ")
}

func neg(m Match) string {
	if m.Neg {
		return "!= "
	}
	return ""
}

// Text renders a match as nft lists it.
func (m Match) Text() string {
	switch m.Kind {
	case MatchIIFName, MatchOIFName:
		what := "iifname "
		if m.Kind == MatchOIFName {
			what = "oifname "
		}
		if m.Set != "" {
			return what + neg(m) + "@" + m.Set
		}
		return what + neg(m) + set(nil, nil, m.Names...)
	case MatchIIFPresent:
		return "iif != 0"
	case MatchNFProto:
		if m.Values[0] == NFProtoIPv6 {
			return "meta nfproto ipv6"
		}
		return "meta nfproto ipv4"
	case MatchL4Proto:
		return "meta l4proto " + neg(m) + set(m.Values, protoName)
	case MatchDPort, MatchSPort:
		dir := "dport"
		if m.Kind == MatchSPort {
			dir = "sport"
		}
		return fmt.Sprintf("%s %s %s%s", protoName(uint32(m.Proto)), dir, neg(m), set(m.Values, func(v uint32) string { return strconv.Itoa(int(v)) }))
	case MatchCtState:
		return "ct state " + ctStateText(m.Values[0])
	case MatchIPsec:
		return "meta ipsec exists"
	case MatchNoIPsecRoute:
		return "rt ipsec missing"
	case MatchICMP:
		s := "icmp type " + icmpName(m.Values[0])
		if m.Code {
			s += " icmp code " + icmpCodeName(m.Values[1])
		}
		return s
	case MatchICMPv6:
		return "icmpv6 type " + set(m.Values, icmpv6Name)
	case MatchTCPSyn:
		return "tcp flags syn / syn,rst"
	case MatchMSSAbove:
		return fmt.Sprintf("tcp option maxseg size > %d", m.Value)
	case MatchCtMark:
		return fmt.Sprintf("ct mark & 0x%08x == 0x%08x", m.Mask, m.Value)
	case MatchMark:
		if m.Mask == 0xffffffff {
			return fmt.Sprintf("meta mark 0x%08x", m.Value)
		}
		return fmt.Sprintf("meta mark & 0x%08x == 0x%08x", m.Mask, m.Value)
	case MatchSAddr, MatchDAddr:
		fam, dir := "ip", "saddr"
		if m.Prefix.Addr().Is6() {
			fam = "ip6"
		}
		if m.Kind == MatchDAddr {
			dir = "daddr"
		}
		p := m.Prefix.Masked().String()
		if m.Prefix.IsSingleIP() {
			p = m.Prefix.Addr().String()
		}
		return fmt.Sprintf("%s %s %s%s", fam, dir, neg(m), p)
	}
	return fmt.Sprintf("<match %d>", m.Kind)
}

// Text renders an action as nft lists it ("" for Continue).
func (a Action) Text() string {
	switch a.Kind {
	case Accept:
		return "accept"
	case Drop:
		return "drop"
	case Reject:
		return "reject"
	case Masquerade:
		return "masquerade"
	case ClampMSSToRoute:
		return "tcp option maxseg size set rt mtu"
	case ClampMSS:
		return fmt.Sprintf("tcp option maxseg size set %d", a.Value)
	case SetCtMark, SetMark:
		and, xor := markOp(a.Mask, a.Value)
		what := "ct mark"
		if a.Kind == SetMark {
			what = "meta mark"
		}
		return fmt.Sprintf("%s set %s & 0x%08x ^ 0x%08x", what, what, and, xor)
	}
	return ""
}

func quoted(names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = strconv.Quote(n)
	}
	return out
}

// set renders one value bare and several in braces.
func set(vals []uint32, name func(uint32) string, strs ...string) string {
	var items []string
	for _, v := range vals {
		items = append(items, name(v))
	}
	for _, s := range strs {
		items = append(items, strconv.Quote(s))
	}
	if len(items) == 1 {
		return items[0]
	}
	return "{ " + strings.Join(items, ", ") + " }"
}

func ctStateText(bits uint32) string {
	var s []string
	for _, x := range []struct {
		bit  uint32
		name string
	}{{CtStateInvalid, "invalid"}, {CtStateEstablished, "established"}, {CtStateRelated, "related"}, {CtStateNew, "new"}} {
		if bits&x.bit != 0 {
			s = append(s, x.name)
		}
	}
	return strings.Join(s, ",")
}

var protoNames = map[uint32]string{ProtoICMP: "icmp", ProtoTCP: "tcp", ProtoUDP: "udp", ProtoGRE: "gre", ProtoESP: "esp", ProtoICMPv6: "ipv6-icmp", 51: "ah", 132: "sctp"}

func protoName(p uint32) string {
	if n, ok := protoNames[p]; ok {
		return n
	}
	return strconv.Itoa(int(p))
}

// ICMP types and codes the policy uses.
const (
	ICMPEchoRequest   = 8
	ICMPUnreachable   = 3
	ICMPTimeExceeded  = 11
	ICMPCodeFragNeed  = 4
	ICMPv6TooBig      = 2
	ICMPv6EchoRequest = 128
	ICMPv6RouterSol   = 133
	ICMPv6RouterAdv   = 134
	ICMPv6NeighSol    = 135
	ICMPv6NeighAdv    = 136
)

var icmpNames = map[uint32]string{0: "echo-reply", ICMPUnreachable: "destination-unreachable", ICMPEchoRequest: "echo-request", ICMPTimeExceeded: "time-exceeded"}

func icmpName(t uint32) string {
	if n, ok := icmpNames[t]; ok {
		return n
	}
	return strconv.Itoa(int(t))
}

func icmpCodeName(c uint32) string {
	if c == ICMPCodeFragNeed {
		return "frag-needed"
	}
	return strconv.Itoa(int(c))
}

var icmpv6Names = map[uint32]string{1: "destination-unreachable", ICMPv6TooBig: "packet-too-big", 3: "time-exceeded", ICMPv6EchoRequest: "echo-request", 129: "echo-reply",
	ICMPv6RouterSol: "nd-router-solicit", ICMPv6RouterAdv: "nd-router-advert", ICMPv6NeighSol: "nd-neighbor-solicit", ICMPv6NeighAdv: "nd-neighbor-advert"}

func icmpv6Name(t uint32) string {
	if n, ok := icmpv6Names[t]; ok {
		return n
	}
	return strconv.Itoa(int(t))
}
