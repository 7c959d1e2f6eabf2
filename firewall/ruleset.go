package firewall

import (
	"fmt"
	"net/netip"
)

// TableName is the nftables table (family inet) that holds the whole
// policy. It is replaced as a whole, in one batch, on every apply.
const TableName = "dmvpn"

// Ruleset is a compiled policy: the chains of the dmvpn table in order,
// each rule with its own named counter. It is plain data: Text renders it
// as nft would list it, and the netlink builder (Linux) turns the same
// values into expressions, so the text an operator reviews and what the
// kernel gets cannot drift apart.
type Ruleset struct {
	// Sets are the named sets of interface names (the zones).
	Sets   []Set
	Chains []Chain
}

// Set is a named set of interface names: a zone, which rules match with
// `iifname @name` (a named set, so nft lists its names readably).
type Set struct {
	Name  string
	Names []string
}

// Chain is a base chain of the table.
type Chain struct {
	Name string
	// Type is "filter", "nat" or "route".
	Type string
	// Hook is "prerouting", "input", "forward", "output" or "postrouting".
	Hook string
	// Priority is the hook priority (Priority* constants).
	Priority int
	// Drop makes the chain's policy drop; accept otherwise.
	Drop  bool
	Rules []Rule
}

// Standard hook priorities, as nft names them.
const (
	PriorityRaw    = -300
	PriorityMangle = -150
	PriorityDstNAT = -100
	PriorityFilter = 0
	PrioritySrcNAT = 100
)

// Rule is one rule: every match must hold, then its counter counts the
// packet and the action runs.
type Rule struct {
	// Name is unique in the table: the rule's named counter, and how
	// errors and show firewall name the rule.
	Name string
	// Comment says what the rule is for (stored in the kernel as the
	// rule's comment).
	Comment string
	Match   []Match
	Action  Action
}

// MatchKind is what a Match tests.
type MatchKind uint8

// Match kinds.
const (
	// MatchIIFName and MatchOIFName test the interface name against Names
	// (one name, a trailing '*' matching a prefix; or a set of names).
	MatchIIFName MatchKind = iota + 1
	MatchOIFName
	// MatchIIFPresent holds for packets that came in through an interface
	// (not the router's own: `iif != 0`).
	MatchIIFPresent
	// MatchNFProto tests the family: Values[0] is NFProtoIPv4 or NFProtoIPv6.
	MatchNFProto
	// MatchL4Proto tests the transport protocol against Values.
	MatchL4Proto
	// MatchDPort and MatchSPort test the port of Proto (tcp or udp)
	// against Values.
	MatchDPort
	MatchSPort
	// MatchCtState tests the connection state bits (CtState*) in Values[0].
	MatchCtState
	// MatchIPsec holds for packets an IPsec SA decrypted (`meta ipsec
	// exists`, the secpath).
	MatchIPsec
	// MatchNoIPsecRoute holds for packets whose route has no IPsec
	// transform (`rt ipsec missing`).
	MatchNoIPsecRoute
	// MatchICMP tests the IPv4 ICMP type (Values[0]) and, when Code is
	// set, its code (Values[1]).
	MatchICMP
	// MatchICMPv6 tests the ICMPv6 type against Values.
	MatchICMPv6
	// MatchTCPSyn holds for TCP segments with SYN set and RST clear.
	MatchTCPSyn
	// MatchMSSAbove holds when the TCP MSS option exceeds Value.
	MatchMSSAbove
	// MatchCtMark and MatchMark test `mark & Mask == Value` of the
	// connection and of the packet.
	MatchCtMark
	MatchMark
	// MatchSAddr and MatchDAddr test the address against Prefix.
	MatchSAddr
	MatchDAddr
)

// Families of MatchNFProto.
const (
	NFProtoIPv4 = 2
	NFProtoIPv6 = 10
)

// Connection state bits of MatchCtState.
const (
	CtStateInvalid     = 1
	CtStateEstablished = 2
	CtStateRelated     = 4
	CtStateNew         = 8
)

// Protocol numbers used by the policy.
const (
	ProtoICMP   = 1
	ProtoTCP    = 6
	ProtoUDP    = 17
	ProtoGRE    = 47
	ProtoESP    = 50
	ProtoICMPv6 = 58
)

// Match is one test of a rule.
type Match struct {
	Kind MatchKind
	// Neg inverts the test (interface names, protocols, ports).
	Neg bool
	// Names are interface names; Set names a Set of them instead.
	Names  []string
	Set    string
	Values []uint32
	// Proto is the transport protocol of a port match.
	Proto uint8
	// Code marks MatchICMP as testing the code too.
	Code bool
	// Mask and Value of a mark match, Value of MatchMSSAbove.
	Mask, Value uint32
	Prefix      netip.Prefix
}

// ActionKind is what a rule does with a matching packet.
type ActionKind uint8

// Actions.
const (
	// Continue only counts.
	Continue ActionKind = iota
	Accept
	Drop
	Reject
	Masquerade
	// ClampMSSToRoute sets the MSS to the route's MTU less the headers.
	ClampMSSToRoute
	// ClampMSS sets the MSS to Value.
	ClampMSS
	// SetCtMark and SetMark set the bits of Mask to Value, leaving the
	// other bits of the connection's or the packet's mark alone.
	SetCtMark
	SetMark
)

// Action is what a rule does.
type Action struct {
	Kind        ActionKind
	Mask, Value uint32
}

// markOp returns the bitwise operation nft uses for "set the bits of mask
// to value": x & (^mask | value) ^ value, which is how nft stores and
// lists `x & ^mask | value`.
func markOp(mask, value uint32) (and, xor uint32) {
	return ^mask | value, value
}

// Validate checks the ruleset's own consistency: unique rule names,
// known chain types and hooks, well-formed matches.
func (rs *Ruleset) Validate() error {
	seen := map[string]bool{}
	chains := map[string]bool{}
	sets := map[string]bool{}
	for _, st := range rs.Sets {
		if st.Name == "" || sets[st.Name] || len(st.Names) == 0 {
			return fmt.Errorf("firewall: set %q empty or twice", st.Name)
		}
		sets[st.Name] = true
	}
	for _, c := range rs.Chains {
		if chains[c.Name] {
			return fmt.Errorf("firewall: chain %q twice", c.Name)
		}
		chains[c.Name] = true
		if _, ok := hookNums[c.Hook]; !ok {
			return fmt.Errorf("firewall: chain %s: unknown hook %q", c.Name, c.Hook)
		}
		switch c.Type {
		case "filter", "nat", "route":
		default:
			return fmt.Errorf("firewall: chain %s: unknown type %q", c.Name, c.Type)
		}
		for _, r := range c.Rules {
			if r.Name == "" || len(r.Name) > 64 {
				return fmt.Errorf("firewall: chain %s: rule name %q must be 1-64 bytes", c.Name, r.Name)
			}
			if seen[r.Name] {
				return fmt.Errorf("firewall: rule name %q twice", r.Name)
			}
			seen[r.Name] = true
			for _, m := range r.Match {
				if err := m.validate(); err != nil {
					return fmt.Errorf("firewall: rule %s: %w", r.Name, err)
				}
				if m.Set != "" && !sets[m.Set] {
					return fmt.Errorf("firewall: rule %s: no set %q", r.Name, m.Set)
				}
			}
		}
	}
	return nil
}

// hookNums are the netfilter hook numbers.
var hookNums = map[string]uint32{"prerouting": 0, "input": 1, "forward": 2, "output": 3, "postrouting": 4}

func (m Match) validate() error {
	switch m.Kind {
	case MatchIIFName, MatchOIFName:
		if m.Set != "" {
			return nil
		}
		if len(m.Names) == 0 {
			return fmt.Errorf("interface match without names")
		}
		for _, n := range m.Names {
			if n == "" || len(n) > 15 {
				return fmt.Errorf("interface name %q must be 1-15 bytes", n)
			}
			if len(m.Names) > 1 && n[len(n)-1] == '*' {
				return fmt.Errorf("wildcard %q in a set of interfaces", n)
			}
		}
	case MatchL4Proto, MatchICMPv6:
		if len(m.Values) == 0 {
			return fmt.Errorf("match without values")
		}
	case MatchDPort, MatchSPort:
		if m.Proto != ProtoTCP && m.Proto != ProtoUDP {
			return fmt.Errorf("port match on protocol %d", m.Proto)
		}
		if len(m.Values) == 0 {
			return fmt.Errorf("port match without ports")
		}
	case MatchNFProto, MatchCtState:
		if len(m.Values) != 1 {
			return fmt.Errorf("match needs one value")
		}
	case MatchICMP:
		if len(m.Values) != 1 && !m.Code || len(m.Values) != 2 && m.Code {
			return fmt.Errorf("icmp match needs a type (and a code)")
		}
	case MatchSAddr, MatchDAddr:
		if !m.Prefix.IsValid() {
			return fmt.Errorf("address match without a prefix")
		}
	}
	return nil
}

// Rule returns the rule of that name and its chain.
func (rs *Ruleset) Rule(name string) (Rule, string, bool) {
	for _, c := range rs.Chains {
		for _, r := range c.Rules {
			if r.Name == name {
				return r, c.Name, true
			}
		}
	}
	return Rule{}, "", false
}

// Len is the number of rules.
func (rs *Ruleset) Len() int {
	n := 0
	for _, c := range rs.Chains {
		n += len(c.Rules)
	}
	return n
}
