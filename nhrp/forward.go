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
	e.recordForwarded(fwd.SrcProto, fwd.RequestID, nbma, fwd.DstProto)
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
	// The claims are checked against the destination this node forwarded
	// (the requester installs what it asked for, not the reply's
	// DstProto): a reply for another destination answers nothing here.
	if to, dst, ok := e.forwardedTo(p.SrcProto, p.RequestID); !ok || to != from || dst != p.DstProto {
		e.refuse(RefusedReplyUnmatched, from, prefixOf(p.DstProto), fmt.Sprintf("reply %d for %s (%s) answers no request forwarded to %s", p.RequestID, p.SrcProto, p.DstProto, from))
		e.sendError(p, raw, from, wire.ErrorInvalidResolutionReply, 0)
		return
	}
	// A prefix over tunnel addresses is passed on as the host asked for,
	// or refused (tunnelPrefix): the requester binds no other node's
	// tunnel address at the responder.
	c, ok := replyClaim(p, from)
	narrowed, given := "", c.Prefix
	if ok && c.Prefix.IsValid() {
		host, why, refuse := e.tunnelPrefix(p.DstProto, c.Prefix, c.Proto)
		if refuse != "" {
			e.refuse(RefusedReplyIdentity, from, c.Prefix, refuse)
			e.sendError(p, raw, from, wire.ErrorInvalidResolutionReply, 0)
			return
		}
		if why != "" {
			narrowed = why
			c.Prefix = netip.Prefix{}
			if host.Addr() != c.Proto {
				c.Prefix = host
			}
		}
	}
	vouched := false
	pass := func(p *wire.Packet) {
		if e.cache.get(en.proto) != en || e.stopping {
			return
		}
		fwd, err := wire.Decode(raw)
		if err != nil {
			return
		}
		fwd.HopCount--
		if narrowed != "" && len(fwd.CIEs) > 0 {
			fwd.CIEs[0].PrefixLen = uint8(fwd.DstProto.BitLen())
			e.refuse(RefusedReplyIdentity, from, given, narrowed+": passed on as "+hostPrefix(fwd.DstProto).String())
		}
		e.appendTransit(fwd, wire.ExtReverseTransit, en.nbma)
		// The requester reaches the responder where its reply came from:
		// the NAT extension says so whatever NBMA address the CIE gives
		// (checked below for a registered responder; the sender's own
		// address behind NAT).
		if resp, nbma := replyNBMA(fwd); resp.IsValid() && nbma != from && !vouched {
			e.addNATCIE(fwd, wire.CIE{PrefixLen: uint8(resp.BitLen()), NBMA: from, Proto: resp})
		}
		e.send(fwd, en.nbma, roleOf(en.typ), p.SrcProto)
	}
	if !ok || e.trusted(from) {
		vouched = true
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
	if reason := replyNATReason(p, c.Proto, from); reason != "" {
		refuse(reason)
		return
	}
	if reg := e.registration(c.Proto); reg != nil {
		switch {
		case reg.nbma != from:
			refuse(fmt.Sprintf("responder %s is registered from %s", c.Proto, reg.nbma))
		case !replyNBMAOK(p, from, reg.claimed):
			_, nbma := replyNBMA(p)
			refuse(fmt.Sprintf("reply puts responder %s at %s, registered from %s (claiming %s)", c.Proto, nbma, reg.nbma, reg.claimed))
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

// replyNBMA returns the responder a reply names and the NBMA address it
// gives for it (the CIE's, else the Responder Address extension's): where
// the requester would send, NAT aside.
func replyNBMA(p *wire.Packet) (resp, nbma netip.Addr) {
	if len(p.CIEs) == 0 || p.CIEs[0].Code != wire.CIESuccess {
		return netip.Addr{}, netip.Addr{}
	}
	nbma = p.CIEs[0].NBMA
	if x := p.Extension(wire.ExtResponderAddress); x != nil && len(x.CIEs) > 0 {
		resp = x.CIEs[0].Proto
		if !nbma.IsValid() {
			nbma = x.CIEs[0].NBMA
		}
	}
	if !resp.IsValid() {
		resp = p.CIEs[0].Proto
	}
	return resp, nbma
}

// replyNBMAOK reports whether the NBMA addresses a reply gives for its
// responder (the CIE's and the Responder Address extension's) are the
// address the reply came from or the one the responder registered with
// (its own address behind NAT).
func replyNBMAOK(p *wire.Packet, from, claimed netip.Addr) bool {
	ok := func(a netip.Addr) bool { return !a.IsValid() || a == from || a == claimed }
	if len(p.CIEs) > 0 && !ok(p.CIEs[0].NBMA) {
		return false
	}
	if x := p.Extension(wire.ExtResponderAddress); x != nil {
		for _, c := range x.CIEs {
			if !ok(c.NBMA) {
				return false
			}
		}
	}
	return true
}

// replyNATReason says why a reply's NAT extension lies about its
// responder: it puts resp somewhere else than the address the reply came
// from.
func replyNATReason(p *wire.Packet, resp, from netip.Addr) string {
	if x := p.Extension(wire.ExtNATAddress); x != nil {
		for _, c := range x.CIEs {
			if c.Proto == resp && c.NBMA.IsValid() && c.NBMA != from {
				return fmt.Sprintf("NAT extension puts responder %s at %s, the reply came from %s", resp, c.NBMA, from)
			}
		}
	}
	return ""
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
