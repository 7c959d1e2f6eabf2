package nhrp

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// handleResolutionRequest answers a Resolution Request this node is
// authoritative for, forwards it toward the node that is, or answers no.
//
// This node answers for its own tunnel address, for static bindings and
// for the networks behind it (what its Router calls local). A hub does not
// answer for its registered clients from its cache: like Cisco it forwards
// the request to the client, which answers with the prefix behind it and
// learns the requester. Anything routed through the tunnel is forwarded to
// the next hop of its route.
func (e *Engine) handleResolutionRequest(p *wire.Packet, raw []byte, from netip.Addr) {
	if e.forwardTransitHasSelf(p) {
		e.stats.drop("loop")
		e.sendError(p, raw, from, wire.ErrorLoopDetected, extOffset(raw))
		return
	}
	if p.SrcProto.BitLen() != e.own.BitLen() || p.DstProto.BitLen() != e.own.BitLen() || e.isOwn(p.SrcProto) {
		e.stats.drop("unsupported")
		return
	}
	// The source must be the sender's, unless a server or static peer
	// forwarded the request (it vouches for it).
	vouched := e.trusted(from)
	if !vouched {
		reason, verify := e.requestSource(p, from)
		if reason != "" {
			e.refuseRequest(p, raw, from, reason)
			return
		}
		if verify {
			pkt, err := wire.Decode(raw) // p is reused for the next packet
			if err != nil {
				return
			}
			raw = append([]byte(nil), raw...)
			c := Claim{NBMA: from, Proto: pkt.SrcProto, Packet: "resolution request", From: from}
			e.verifyClaim(c, false, func() { e.serveResolution(pkt, raw, from, false) }, func(reason string, identity bool) {
				if identity {
					e.refuseRequest(pkt, raw, from, reason)
				}
			})
			return
		}
	}
	e.serveResolution(p, raw, from, vouched)
}

// refuseRequest refuses a Resolution Request whose source its sender
// does not prove: counted, reported, answered with an Error Indication.
func (e *Engine) refuseRequest(p *wire.Packet, raw []byte, from netip.Addr, reason string) {
	e.refuse(RefusedRequestSource, from, hostPrefix(p.SrcProto), reason)
	e.sendError(p, raw, from, wire.ErrorAuthenticationFailure, 0)
}

// serveResolution answers a Resolution Request whose source is proven
// (vouched: a server or static peer forwarded it), forwards it, or
// answers no.
func (e *Engine) serveResolution(p *wire.Packet, raw []byte, from netip.Addr, vouched bool) {
	if e.stopping {
		return
	}
	target := p.DstProto

	// Authoritative here?
	if e.isOwn(target) {
		// The own entry records the requesters too: they are purged when
		// this node's NBMA address moves.
		e.answer(p, raw, from, vouched, hostPrefix(target), e.localNBMA(from), e.own, e.cache.get(hostPrefix(e.own)))
		return
	}
	if en := e.cache.lookup(target, func(en *entry) bool { return en.typ == TypeStatic || en.typ == TypeLocal }); en != nil {
		if en.typ == TypeStatic {
			next := target
			if en.proto.IsSingleIP() {
				next = en.proto.Addr()
			}
			e.answer(p, raw, from, vouched, en.proto, en.nbma, next, nil)
		} else {
			e.answer(p, raw, from, vouched, en.proto, e.localNBMA(from), e.own, en)
		}
		return
	}
	ri, routed := e.route(target)
	if routed && ri.Local && ri.Prefix.IsValid() && (ri.Prefix.IsSingleIP() || ri.Prefix.Bits() >= e.cfg.MinShortcutPrefix) && !ri.Prefix.Contains(e.own) {
		e.answer(p, raw, from, vouched, ri.Prefix, e.localNBMA(from), e.own, e.localEntry(ri.Prefix))
		return
	}

	// Forward toward the node that knows: a registered client covering
	// the target, or the tunnel next hop of its route.
	if en := e.cache.lookup(target, func(en *entry) bool { return en.typ == TypeDynamic }); en != nil {
		if en.nbma != from {
			e.forwardRequest(p, raw, from, en.nbma, en.proto.Addr())
			return
		}
	}
	if routed && ri.NextHop.IsValid() && !e.isOwn(ri.NextHop) {
		if en := e.cache.get(hostPrefix(ri.NextHop)); en != nil && en.nbma.IsValid() && en.nbma != from && en.typ >= TypeCached {
			e.forwardRequest(p, raw, from, en.nbma, ri.NextHop)
			return
		}
	}
	// A spoke that knows nothing passes the question to its server.
	if e.cfg.Role != RoleHub {
		if n := e.upNHS(); n != nil && n.nbma != from {
			e.forwardRequest(p, raw, from, n.nbma, n.proto)
			return
		}
	}
	e.nak(p, raw, from, vouched)
}

// requesterBehindNAT reports whether the NAT extension says the requester
// of p is behind NAT (its public address differs from the one it claims).
func requesterBehindNAT(p *wire.Packet) bool {
	if x := p.Extension(wire.ExtNATAddress); x != nil {
		for _, c := range x.CIEs {
			if c.Proto == p.SrcProto && c.NBMA.IsValid() && c.NBMA != p.SrcNBMA {
				return true
			}
		}
	}
	return false
}

// requesterNBMA is where an answer to p goes: the requester's public
// address from the NAT extension, else the outer source when the request
// came straight from it, else the NBMA address it claims.
func requesterNBMA(p *wire.Packet, from netip.Addr) netip.Addr {
	if x := p.Extension(wire.ExtNATAddress); x != nil {
		for _, c := range x.CIEs {
			if c.Proto == p.SrcProto && c.NBMA.IsValid() {
				return c.NBMA
			}
		}
	}
	if fwd := p.Extension(wire.ExtForwardTransit); (fwd == nil || len(fwd.CIEs) == 0) && from.IsValid() {
		return from
	}
	return p.SrcNBMA
}

// answer sends a positive Resolution Reply for prefix, at nbma, straight
// to the requester, and remembers the requester. The CIE's client address
// is next, the tunnel address to send to (this node's own for itself and
// the networks behind it), as FRR puts it: FRR routes the prefix through
// it. The prefix length applies to the destination asked for (RFC 2332
// section 5.2.2).
func (e *Engine) answer(p *wire.Packet, raw []byte, from netip.Addr, vouched bool, prefix netip.Prefix, nbma, next netip.Addr, local *entry) {
	if e.refuseUnknown(p, raw, from) {
		return
	}
	// A request its sender made itself is answered to the sender, never
	// to an address it names (no reflection toward a third party).
	to := from
	if vouched {
		to = requesterNBMA(p, from)
	}
	if pub := e.publicNBMA(); pub.IsValid() && nbma == e.localNBMA(from) {
		nbma = pub
	}
	holding := e.holding()
	c := wire.CIE{
		PrefixLen: uint8(prefix.Bits()), MTU: e.mtu(), HoldingTime: holding,
		NBMA: nbma, Proto: next,
	}
	reply := &wire.Packet{
		AddrFamily: p.AddrFamily, ProtoType: p.ProtoType, HopCount: HopCount,
		Type: wire.TypeResolutionReply, RequestID: p.RequestID,
		Flags:   p.Flags&(wire.ResFlagQ|wire.ResFlagS|wire.ResFlagNAT) | wire.ResFlagA | wire.ResFlagD | wire.ResFlagU,
		SrcNBMA: p.SrcNBMA, SrcNBMAType: p.SrcNBMAType, SrcProto: p.SrcProto, DstProto: p.DstProto,
		CIEs: []wire.CIE{c},
	}
	resp := e.ownCIE(from, 0)
	reply.Extensions = e.replyExtensions(p, &resp, e.natCIEs())
	// A requester behind NAT gets the answer back through the server that
	// forwarded the request: a packet from here to its public address
	// before it sent one here would find no mapping on its NAT router and
	// (for GRE, which has no ports) create a conntrack entry there that
	// keeps the NAT from mapping the requester's own packets to us. Its
	// first direct packet, after the answer, opens the path both ways.
	via := to
	if requesterBehindNAT(p) && from != to {
		via = from
	}
	// The requester is remembered (to be purged when the network goes or
	// this node moves) and, if it asked, bound — once its identity proves
	// the address answers go to. A request passed on by a server names
	// that address itself: with a Verifier the answer goes there only
	// after the peer there proved to be the requester (through the server
	// it goes at once: the server is no third party).
	src, hold := p.SrcProto, uint16(0)
	if len(p.CIEs) > 0 {
		hold = p.CIEs[0].HoldingTime
	}
	bind := p.Flags&wire.ResFlagS != 0
	send := func() { e.send(reply, to, "shortcut", src) }
	if via != to {
		e.send(reply, via, roleOf(TypeNHS), netip.Addr{})
		send = func() {}
	} else if vouched && e.deps.Verifier != nil {
		b, err := reply.MarshalBinary() // reply is sent later: keep its own copy
		if err != nil {
			return
		}
		if reply, err = wire.Decode(b); err != nil {
			return
		}
	} else {
		send()
		send = func() {}
	}
	e.proveRequester(src, to, p.SrcNBMA, from, vouched, bind, e.capHold(hold), func() {
		if local != nil && e.cache.get(local.proto) == local {
			e.tell(local, to, src)
		}
		send()
	})
}

// toldPeer is a requester a local entry was advertised to, until when.
type toldPeer struct {
	proto netip.Addr
	until time.Time
}

// maxTold bounds the requesters remembered per local entry.
const maxTold = 4096

// tell remembers that the requester src at nbma was told about en, until
// the binding it got runs out; a full list makes room by forgetting the
// requester whose binding runs out first (counted: LimitTold).
func (e *Engine) tell(en *entry, nbma, src netip.Addr) {
	if en.told == nil {
		en.told = make(map[netip.Addr]toldPeer)
	}
	if _, ok := en.told[nbma]; !ok && len(en.told) >= min(maxTold, e.cfg.Limits.MaxPeers) {
		e.limited(LimitTold)
		var first netip.Addr
		var at time.Time
		for a, t := range en.told {
			if !first.IsValid() || t.until.Before(at) {
				first, at = a, t.until
			}
		}
		delete(en.told, first)
	}
	en.told[nbma] = toldPeer{proto: src, until: e.now.Add(e.cfg.HoldingTime)}
}

// pruneTold forgets the requesters whose binding of a local entry ran
// out: they hold nothing to purge.
func (e *Engine) pruneTold() {
	for _, en := range e.cache.ofType(TypeLocal) {
		for a, t := range en.told {
			if !e.now.Before(t.until) {
				delete(en.told, a)
			}
		}
	}
}

// scheduleRenewQuiet lets an implicit binding run out unless used; it is
// not renewed by resolving (the requester renews it by asking again).
func (e *Engine) scheduleRenewQuiet(en *entry) { en.renew.Stop() }

// proveRequester runs proven once a requester is proven to be at the NBMA
// address answers go to, and (bind) learns its binding — its tunnel
// address there: with a Verifier, by the identity of the peer at that
// address (a request its sender made itself was verified already);
// without, a server vouched for it or the source was found registered (or
// resolved) at the address it came from.
func (e *Engine) proveRequester(proto, to, claimed, from netip.Addr, vouched, bind bool, hold time.Duration, proven func()) {
	install := func() {
		if bind {
			if en := e.installBinding(hostPrefix(proto), to, claimed, from, FlagImplicit|FlagRouter, hold, 0); en != nil {
				e.scheduleRenewQuiet(en)
			}
		}
		proven()
	}
	if e.deps.Verifier == nil || !vouched {
		install()
		return
	}
	c := Claim{NBMA: to, Proto: proto, Packet: "resolution request", From: from}
	e.verifyClaim(c, true, install, func(reason string, identity bool) {
		if identity {
			e.refuse(RefusedRequester, from, hostPrefix(proto), fmt.Sprintf("requester at %s: %s", to, reason))
		}
	})
}

// localEntry returns the local entry of a network behind this node,
// creating it: it records who was told about the network.
func (e *Engine) localEntry(p netip.Prefix) *entry {
	if en := e.cache.get(p); en != nil {
		if en.typ == TypeLocal {
			return en
		}
		if en.typ > TypeLocal {
			return nil
		}
		e.removeEntry(en, CauseReplaced)
	}
	en := &entry{typ: TypeLocal, proto: p, created: e.now}
	e.cache.put(en)
	return en
}

// nak answers that no binding exists.
func (e *Engine) nak(p *wire.Packet, raw []byte, from netip.Addr, vouched bool) {
	if e.refuseUnknown(p, raw, from) {
		return
	}
	e.stats.drop("no-binding")
	reply := &wire.Packet{
		AddrFamily: p.AddrFamily, ProtoType: p.ProtoType, HopCount: HopCount,
		Type: wire.TypeResolutionReply, RequestID: p.RequestID, Flags: p.Flags &^ wire.ResFlagA,
		SrcNBMA: p.SrcNBMA, SrcNBMAType: p.SrcNBMAType, SrcProto: p.SrcProto, DstProto: p.DstProto,
		CIEs: []wire.CIE{{Code: wire.CIENoBinding, PrefixLen: uint8(p.DstProto.BitLen()), MTU: e.mtu(), Proto: p.DstProto}},
	}
	reply.Extensions = e.replyExtensions(p, nil, nil)
	to := from
	if vouched {
		to = requesterNBMA(p, from)
	}
	if e.deps.Peers != nil {
		if pe := e.peers[to]; pe == nil || pe.state != peerUp {
			to = from // the peer that handed us the request is up
		}
	}
	e.send(reply, to, "shortcut", p.SrcProto)
}
