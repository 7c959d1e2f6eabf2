package nhrp

import (
	"fmt"
	"net/netip"

	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// forwardRequest passes a Resolution Request on toward nbma: the hop
// count goes down by one, this node is added to the Forward Transit NHS
// Record, the authentication is this node's, and a NATed requester's
// public address goes into the NAT extension so the responder can reach
// it.
func (e *Engine) forwardRequest(p *wire.Packet, raw []byte, from, nbma, proto netip.Addr) {
	if p.HopCount <= 1 {
		e.stats.drop("hop-count")
		e.sendError(p, raw, from, wire.ErrorHopCountExceeded, 9)
		return
	}
	fwd, err := wire.Decode(raw) // a private copy: p is reused
	if err != nil {
		return
	}
	fwd.HopCount--
	e.appendTransit(fwd, wire.ExtForwardTransit, nbma)
	if en := e.cache.get(hostPrefix(fwd.SrcProto)); en != nil && en.typ == TypeDynamic && en.flags&FlagNAT != 0 {
		e.addNATCIE(fwd, wire.CIE{PrefixLen: uint8(fwd.SrcProto.BitLen()), NBMA: en.nbma, Proto: fwd.SrcProto})
	}
	role := "client"
	if e.nhsByNBMA(nbma) != nil {
		role = "nhs"
	}
	e.recordForwarded(fwd.SrcProto, fwd.RequestID, nbma)
	e.send(fwd, nbma, role, proto)
}

// forwardReply passes a Resolution Reply for another node back toward its
// requester, adding this node to the Reverse Transit NHS Record — only a
// reply from the node this node forwarded the request to, whose responder
// address and prefix that node proves (its registration here, with the
// networks its identity allows, or its Verifier-checked identity).
func (e *Engine) forwardReply(p *wire.Packet, raw []byte, from netip.Addr) {
	x := p.Extension(wire.ExtReverseTransit)
	if x != nil {
		for _, c := range x.CIEs {
			if c.Proto == e.own {
				e.stats.drop("loop")
				return
			}
		}
	}
	en := e.cache.get(hostPrefix(p.SrcProto))
	if en == nil || !en.nbma.IsValid() || en.nbma == from || en.typ < TypeCached || p.HopCount <= 1 {
		e.stats.drop("not-for-us")
		return
	}
	if to, ok := e.forwardedTo(p.SrcProto, p.RequestID); !ok || to != from {
		e.refuse(RefusedReplyUnmatched, from, prefixOf(p.DstProto), fmt.Sprintf("reply %d for %s answers no request forwarded to %s", p.RequestID, p.SrcProto, from))
		e.sendError(p, raw, from, wire.ErrorInvalidResolutionReply, 0)
		return
	}
	pass := func(p *wire.Packet) {
		if e.cache.get(en.proto) != en || e.stopping {
			return
		}
		fwd, err := wire.Decode(raw)
		if err != nil {
			return
		}
		fwd.HopCount--
		e.appendTransit(fwd, wire.ExtReverseTransit, en.nbma)
		e.send(fwd, en.nbma, roleOf(en.typ), p.SrcProto)
	}
	c, ok := replyClaim(p, from)
	if !ok || e.trusted(from) {
		pass(p) // a negative answer claims nothing; a server vouches for its own
		return
	}
	refuse := func(reason string) {
		claimed := hostPrefix(c.Proto)
		if c.Prefix.IsValid() {
			claimed = c.Prefix
		}
		e.refuse(RefusedReplyIdentity, from, claimed, reason)
		e.sendError(p, raw, from, wire.ErrorInvalidResolutionReply, 0)
	}
	if reg := e.registration(c.Proto); reg != nil {
		switch {
		case reg.nbma != from:
			refuse(fmt.Sprintf("responder %s is registered from %s", c.Proto, reg.nbma))
		case c.Prefix.IsValid() && !within(c.Prefix, reg.nets):
			refuse(fmt.Sprintf("%s is outside the networks %v of %s", c.Prefix, reg.nets, c.Proto))
		default:
			pass(p)
		}
		return
	}
	if e.deps.Verifier == nil {
		refuse(fmt.Sprintf("responder %s is not registered from %s", c.Proto, from))
		return
	}
	pkt, err := wire.Decode(raw)
	if err != nil {
		return
	}
	raw = append([]byte(nil), raw...)
	c.Packet, c.From = "resolution reply", from
	e.verifyClaim(c, false, func() { pass(pkt) }, func(reason string, identity bool) {
		if identity {
			e.refuse(RefusedReplyIdentity, from, hostPrefix(c.Proto), reason)
		}
	})
}

// replyClaim returns what a positive Resolution Reply claims about its
// responder: its tunnel address at the sender, and the prefix it
// advertises when that is more than the address.
func replyClaim(p *wire.Packet, from netip.Addr) (Claim, bool) {
	if len(p.CIEs) == 0 || p.CIEs[0].Code != wire.CIESuccess {
		return Claim{}, false
	}
	c := p.CIEs[0]
	resp := netip.Addr{}
	if x := p.Extension(wire.ExtResponderAddress); x != nil && len(x.CIEs) > 0 {
		resp = x.CIEs[0].Proto
	}
	if !resp.IsValid() {
		resp = c.Proto
	}
	if !resp.IsValid() {
		resp = p.DstProto
	}
	bits := int(c.PrefixLen)
	if bits == 0 || bits == 0xff || bits > p.DstProto.BitLen() {
		bits = p.DstProto.BitLen()
	}
	cl := Claim{NBMA: from, Proto: resp}
	if pf := netip.PrefixFrom(p.DstProto, bits).Masked(); pf.IsValid() && !(pf.IsSingleIP() && pf.Addr() == resp) {
		cl.Prefix = pf
	}
	return cl, resp.IsValid()
}

// within reports whether p lies inside one of nets; no nets: no
// restriction.
func within(p netip.Prefix, nets []netip.Prefix) bool {
	if len(nets) == 0 {
		return true
	}
	for _, n := range nets {
		if n.Bits() <= p.Bits() && n.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// appendTransit adds this node to a transit record extension (creating it
// before End if the packet has none) and puts this node's authentication
// in.
func (e *Engine) appendTransit(p *wire.Packet, t wire.ExtType, toward netip.Addr) {
	self := e.ownCIE(toward, 0)
	found := false
	out := p.Extensions[:0:0]
	for _, x := range p.Extensions {
		switch {
		case x.Type == t:
			x.CIEs = append(append([]wire.CIE(nil), x.CIEs...), self)
			found = true
		case x.Type == wire.ExtAuthentication:
			if len(e.cfg.AuthPassword) == 0 {
				continue
			}
			x = wire.NewCiscoAuth(e.cfg.AuthPassword)
		case x.Type == wire.ExtEnd && !found:
			out = append(out, wire.Extension{Type: t, Compulsory: true, CIEs: []wire.CIE{self}})
			found = true
		}
		out = append(out, x)
	}
	if !found {
		out = append(out, wire.Extension{Type: t, Compulsory: true, CIEs: []wire.CIE{self}})
	}
	p.Extensions = out
}

// addNATCIE adds c to the NAT Address extension unless it has a CIE for
// the same protocol address.
func (e *Engine) addNATCIE(p *wire.Packet, c wire.CIE) {
	for i := range p.Extensions {
		x := &p.Extensions[i]
		if x.Type != wire.ExtNATAddress {
			continue
		}
		for _, have := range x.CIEs {
			if have.Proto == c.Proto {
				return
			}
		}
		x.CIEs = append(append([]wire.CIE(nil), x.CIEs...), c)
		return
	}
	// No NAT extension: add one before End.
	n := len(p.Extensions)
	if n > 0 && p.Extensions[n-1].Type == wire.ExtEnd {
		p.Extensions = append(p.Extensions[:n-1:n-1], wire.Extension{Type: wire.ExtNATAddress, CIEs: []wire.CIE{c}}, p.Extensions[n-1])
		return
	}
	p.Extensions = append(p.Extensions, wire.Extension{Type: wire.ExtNATAddress, CIEs: []wire.CIE{c}})
}
