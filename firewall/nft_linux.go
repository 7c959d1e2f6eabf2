//go:build linux

package firewall

import (
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// Keys the vendored constants lack (linux/netfilter/nf_tables.h).
const (
	metaKeySecpath = 25 // NFT_META_SECPATH: `meta ipsec`
	rtKeyXfrm      = 4  // NFT_RT_XFRM: `rt ipsec`
	tcpOptMaxseg   = 2
	maxComment     = 127
)

var chainTypes = map[string]nftables.ChainType{
	"filter": nftables.ChainTypeFilter, "nat": nftables.ChainTypeNAT, "route": nftables.ChainTypeRoute,
}

// AddTo adds the ruleset to c's batch inside table t (which the caller
// added): one named counter per rule, then every chain and its rules.
// Nothing is sent until c.Flush.
func (rs *Ruleset) AddTo(c *nftables.Conn, t *nftables.Table) error {
	return rs.addTo(c, t, false)
}

// addTo adds the ruleset; probe puts each chain's rules in a regular
// chain that its base chain (policy accept) jumps to behind a test that
// never holds (`meta nfproto ipv4 meta nfproto ipv6`): the kernel
// validates the rules against the base chain's hook as it would in the
// real table, but no packet ever reaches them.
func (rs *Ruleset) addTo(c *nftables.Conn, t *nftables.Table, probe bool) error {
	sets := map[string]*nftables.Set{}
	for _, st := range rs.Sets {
		// Host byte order, as nft declares ifname sets: nft lists the
		// names readably.
		s := &nftables.Set{Table: t, Name: st.Name, KeyType: nftables.TypeIFName, KeyByteOrder: binaryutil.NativeEndian}
		elems := make([]nftables.SetElement, len(st.Names))
		for i, n := range st.Names {
			elems[i] = nftables.SetElement{Key: ifname(n)}
		}
		if err := c.AddSet(s, elems); err != nil {
			return fmt.Errorf("firewall: set %s: %w", st.Name, err)
		}
		sets[st.Name] = s
	}
	for _, ch := range rs.Chains {
		for _, r := range ch.Rules {
			c.AddObj(&nftables.CounterObj{Table: t, Name: r.Name})
		}
	}
	for _, ch := range rs.Chains {
		policy := nftables.ChainPolicyAccept
		if ch.Drop && !probe {
			policy = nftables.ChainPolicyDrop
		}
		hook := nftables.ChainHook(hookNums[ch.Hook])
		prio := nftables.ChainPriority(ch.Priority)
		nc := c.AddChain(&nftables.Chain{Name: ch.Name, Table: t, Type: chainTypes[ch.Type],
			Hooknum: &hook, Priority: &prio, Policy: &policy})
		if probe {
			base := nc
			nc = c.AddChain(&nftables.Chain{Name: ch.Name + "_rules", Table: t})
			c.AddRule(&nftables.Rule{Table: t, Chain: base, Exprs: append(append(nfprotoIs(NFProtoIPv4), nfprotoIs(NFProtoIPv6)...),
				&expr.Verdict{Kind: expr.VerdictJump, Chain: nc.Name})})
		}
		for _, r := range ch.Rules {
			exprs, err := r.exprs(c, t, sets)
			if err != nil {
				return fmt.Errorf("firewall: rule %s: %w", r.Name, err)
			}
			comment := r.Comment
			if len(comment) > maxComment {
				comment = comment[:maxComment]
			}
			c.AddRule(&nftables.Rule{Table: t, Chain: nc, Exprs: exprs,
				UserData: userdata.AppendString(nil, userdata.TypeComment, comment)})
		}
	}
	return nil
}

// exprs compiles a rule; sets it needs are added to c's batch first.
func (r *Rule) exprs(c *nftables.Conn, t *nftables.Table, sets map[string]*nftables.Set) ([]expr.Any, error) {
	var out []expr.Any
	for _, m := range r.Match {
		e, err := m.exprs(c, t, sets)
		if err != nil {
			return nil, err
		}
		out = append(out, e...)
	}
	out = append(out, &expr.Objref{Type: int(nftables.ObjTypeCounter), Name: r.Name})
	return append(out, r.Action.exprs()...), nil
}

func ifname(n string) []byte {
	b := make([]byte, 16)
	copy(b, n)
	return b
}

func be16(v uint32) []byte { return binaryutil.BigEndian.PutUint16(uint16(v)) }
func be32(v uint32) []byte { return binaryutil.BigEndian.PutUint32(v) }
func ne32(v uint32) []byte { return binaryutil.NativeEndian.PutUint32(v) }

func load(key expr.MetaKey) *expr.Meta { return &expr.Meta{Key: key, Register: 1} }

func cmpOp(neg bool) expr.CmpOp {
	if neg {
		return expr.CmpOpNeq
	}
	return expr.CmpOpEq
}

// lookup compares register 1 with one value, or looks it up in an
// anonymous constant set of several.
func lookup(c *nftables.Conn, t *nftables.Table, kt nftables.SetDatatype, neg bool, vals [][]byte) ([]expr.Any, error) {
	if len(vals) == 1 {
		return []expr.Any{&expr.Cmp{Op: cmpOp(neg), Register: 1, Data: vals[0]}}, nil
	}
	s := &nftables.Set{Table: t, Anonymous: true, Constant: true, KeyType: kt}
	elems := make([]nftables.SetElement, len(vals))
	for i, v := range vals {
		elems[i] = nftables.SetElement{Key: v}
	}
	if err := c.AddSet(s, elems); err != nil {
		return nil, err
	}
	return []expr.Any{&expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID, Invert: neg}}, nil
}

func l4Is(p uint32) []expr.Any {
	return []expr.Any{load(expr.MetaKeyL4PROTO), &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(p)}}}
}

func nfprotoIs(p uint32) []expr.Any {
	return []expr.Any{load(expr.MetaKeyNFPROTO), &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(p)}}}
}

func th(off, n uint32) *expr.Payload {
	return &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: n}
}

func masked(load expr.Any, mask, value uint32) []expr.Any {
	if mask == 0xffffffff {
		return []expr.Any{load, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ne32(value)}}
	}
	return []expr.Any{load,
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: ne32(mask), Xor: ne32(0)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ne32(value)}}
}

func (m Match) exprs(c *nftables.Conn, t *nftables.Table, sets map[string]*nftables.Set) ([]expr.Any, error) {
	switch m.Kind {
	case MatchIIFName, MatchOIFName:
		key := expr.MetaKeyIIFNAME
		if m.Kind == MatchOIFName {
			key = expr.MetaKeyOIFNAME
		}
		out := []expr.Any{load(key)}
		if m.Set != "" {
			st, ok := sets[m.Set]
			if !ok {
				return nil, fmt.Errorf("no set %q", m.Set)
			}
			return append(out, &expr.Lookup{SourceRegister: 1, SetName: st.Name, SetID: st.ID, Invert: m.Neg}), nil
		}
		if len(m.Names) == 1 && m.Names[0][len(m.Names[0])-1] == '*' {
			// A prefix: compare its bytes only, without the NUL.
			p := m.Names[0][:len(m.Names[0])-1]
			return append(out, &expr.Cmp{Op: cmpOp(m.Neg), Register: 1, Data: []byte(p)}), nil
		}
		vals := make([][]byte, len(m.Names))
		for i, n := range m.Names {
			vals[i] = ifname(n)
		}
		l, err := lookup(c, t, nftables.TypeIFName, m.Neg, vals)
		return append(out, l...), err
	case MatchIIFPresent:
		return []expr.Any{load(expr.MetaKeyIIF), &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ne32(0)}}, nil
	case MatchNFProto:
		return nfprotoIs(m.Values[0]), nil
	case MatchL4Proto:
		vals := make([][]byte, len(m.Values))
		for i, v := range m.Values {
			vals[i] = []byte{byte(v)}
		}
		l, err := lookup(c, t, nftables.TypeInetProto, m.Neg, vals)
		return append([]expr.Any{load(expr.MetaKeyL4PROTO)}, l...), err
	case MatchDPort, MatchSPort:
		off := uint32(2)
		if m.Kind == MatchSPort {
			off = 0
		}
		vals := make([][]byte, len(m.Values))
		for i, v := range m.Values {
			vals[i] = be16(v)
		}
		l, err := lookup(c, t, nftables.TypeInetService, m.Neg, vals)
		return append(append(l4Is(uint32(m.Proto)), th(off, 2)), l...), err
	case MatchCtState:
		return []expr.Any{
			&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: ne32(m.Values[0]), Xor: ne32(0)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ne32(0)},
		}, nil
	case MatchIPsec:
		return []expr.Any{load(metaKeySecpath), &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ne32(1)}}, nil
	case MatchNoIPsecRoute:
		return []expr.Any{&expr.Rt{Register: 1, Key: rtKeyXfrm}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ne32(0)}}, nil
	case MatchICMP:
		out := append(nfprotoIs(NFProtoIPv4), l4Is(ProtoICMP)...)
		if m.Code {
			return append(out, th(0, 2), &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(m.Values[0]), byte(m.Values[1])}}), nil
		}
		return append(out, th(0, 1), &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(m.Values[0])}}), nil
	case MatchICMPv6:
		vals := make([][]byte, len(m.Values))
		for i, v := range m.Values {
			vals[i] = []byte{byte(v)}
		}
		l, err := lookup(c, t, nftables.TypeICMP6Type, false, vals)
		out := append(nfprotoIs(NFProtoIPv6), l4Is(ProtoICMPv6)...)
		return append(append(out, th(0, 1)), l...), err
	case MatchTCPSyn:
		return append(l4Is(ProtoTCP), th(13, 1),
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x02 | 0x04}, Xor: []byte{0}},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0x02}}), nil
	case MatchMSSAbove:
		return []expr.Any{
			&expr.Exthdr{DestRegister: 1, Op: expr.ExthdrOpTcpopt, Type: tcpOptMaxseg, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpGt, Register: 1, Data: be16(m.Value)},
		}, nil
	case MatchCtMark:
		return masked(&expr.Ct{Register: 1, Key: expr.CtKeyMARK}, m.Mask, m.Value), nil
	case MatchMark:
		return masked(load(expr.MetaKeyMARK), m.Mask, m.Value), nil
	case MatchSAddr, MatchDAddr:
		return addrExprs(m), nil
	}
	return nil, fmt.Errorf("unknown match kind %d", m.Kind)
}

// addrExprs compares the source or destination address with a prefix.
func addrExprs(m Match) []expr.Any {
	p := m.Prefix.Masked()
	a := p.Addr()
	fam, off, n := uint32(NFProtoIPv4), uint32(12), uint32(4)
	if a.Is6() {
		fam, off, n = NFProtoIPv6, 8, 16
	}
	if m.Kind == MatchDAddr {
		off += n
	}
	out := append(nfprotoIs(fam), &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n})
	if p.Bits() < a.BitLen() {
		mask := make([]byte, n)
		for i := 0; i < p.Bits(); i++ {
			mask[i/8] |= 0x80 >> (i % 8)
		}
		out = append(out, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: n, Mask: mask, Xor: make([]byte, n)})
	}
	return append(out, &expr.Cmp{Op: cmpOp(m.Neg), Register: 1, Data: a.AsSlice()})
}

func (a Action) exprs() []expr.Any {
	switch a.Kind {
	case Accept:
		return []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}
	case Drop:
		return []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}
	case Reject:
		return []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH}}
	case Masquerade:
		return []expr.Any{&expr.Masq{}}
	case ClampMSSToRoute:
		return []expr.Any{
			&expr.Rt{Register: 1, Key: expr.RtTCPMSS},
			&expr.Byteorder{SourceRegister: 1, DestRegister: 1, Op: expr.ByteorderHton, Len: 2, Size: 2},
			&expr.Exthdr{SourceRegister: 1, Op: expr.ExthdrOpTcpopt, Type: tcpOptMaxseg, Offset: 2, Len: 2},
		}
	case ClampMSS:
		return []expr.Any{
			&expr.Immediate{Register: 1, Data: be16(a.Value)},
			&expr.Exthdr{SourceRegister: 1, Op: expr.ExthdrOpTcpopt, Type: tcpOptMaxseg, Offset: 2, Len: 2},
		}
	case SetCtMark, SetMark:
		and, xor := markOp(a.Mask, a.Value)
		bw := &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: ne32(and), Xor: ne32(xor)}
		if a.Kind == SetCtMark {
			return []expr.Any{&expr.Ct{Register: 1, Key: expr.CtKeyMARK}, bw, &expr.Ct{Register: 1, SourceRegister: true, Key: expr.CtKeyMARK}}
		}
		return []expr.Any{load(expr.MetaKeyMARK), bw, &expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1}}
	}
	return nil
}
