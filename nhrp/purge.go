package nhrp

import (
	"fmt"
	"net/netip"
	"time"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// purgeTries is how many Purge Requests are sent before giving up on a
// reply.
const purgeTries = 3

// sendPurge sends a Purge Request for prefixes to a peer. With noReply the
// N flag is set and nothing is waited for; otherwise the request is
// retransmitted until a Purge Reply comes.
func (e *Engine) sendPurge(to, toProto netip.Addr, prefixes []netip.Prefix, noReply bool) {
	var attempt func(n int)
	attempt = func(n int) {
		id := e.nextReqID()
		dst := toProto
		if !dst.IsValid() {
			dst = e.own
		}
		p := e.newPacket(wire.TypePurgeRequest, dst, to)
		p.RequestID = id
		if noReply {
			p.Flags = wire.PurgeFlagN
		}
		for _, pf := range prefixes {
			p.CIEs = append(p.CIEs, wire.CIE{PrefixLen: uint8(pf.Bits()), MTU: e.mtu(), HoldingTime: e.holding(), Proto: pf.Addr()})
		}
		p.Extensions = e.requestExtensions(false, nil)
		if noReply {
			e.write(p, to) // the peer may be going away: no bring-up
			return
		}
		var t *timer
		e.addPending(&pendingReq{id: id, typ: wire.TypePurgeRequest, to: to,
			onReply: func(*wire.Packet, netip.Addr) { t.Stop() },
			onFail:  func(string) { t.Stop() },
		})
		e.send(p, to, "shortcut", toProto)
		t = e.sched.after(e.now, backoff(n, 4*time.Second), func() {
			delete(e.pending, id)
			if n < purgeTries && !e.stopping {
				attempt(n + 1)
			}
		})
	}
	attempt(1)
}

// purgeOwnAt tells a server this node no longer registers with it.
func (e *Engine) purgeOwnAt(n *nhsClient) {
	e.sendPurge(n.nbma, n.proto, []netip.Prefix{hostPrefix(e.own)}, true)
}

// withdrawLocal purges a network behind this node from the peers that
// were told about it, and forgets it.
func (e *Engine) withdrawLocal(en *entry, reason string) {
	for nbma, t := range en.told {
		e.sendPurge(nbma, t.proto, []netip.Prefix{en.proto}, e.stopping)
	}
	e.log.Info("network withdrawn", zap.Stringer("prefix", en.proto), zap.Int("peers_purged", len(en.told)), zap.String("reason", reason))
	en.told = nil
	if !e.stopping {
		e.cache.del(en)
	}
}

// checkLocals re-checks the networks this node answered for: one no longer
// behind it is purged from the peers that cached it.
func (e *Engine) checkLocals() {
	for _, en := range e.cache.ofType(TypeLocal) {
		if en.proto == hostPrefix(e.own) || len(en.told) == 0 {
			continue
		}
		ri, ok := e.route(en.proto.Addr())
		if ok && ri.Local && ri.Prefix.Masked() == en.proto {
			continue
		}
		e.withdrawLocal(en, "no longer routed here")
	}
}

// scheduleLocalCheck re-checks local networks every 10 seconds.
func (e *Engine) scheduleLocalCheck() {
	e.sched.after(e.now, 10*time.Second, func() {
		if e.stopping {
			return
		}
		e.checkLocals()
		e.pruneTold()
		e.sweepPeers()
		e.pruneForwarded()
		e.scheduleLocalCheck()
	})
}

// handlePurgeRequest removes what a peer says is no longer valid — only
// what that peer owns: a client its registration, the node a binding or
// shortcut was learned from (its responder, or the server that passed the
// answer on) that binding, a server this node's registration with it (this
// node registers again at once: the server restarted, or an operator
// cleared it) and the negative entries of resolutions; with a Verifier, a
// binding or shortcut also when the sender's identity proves the tunnel
// address it belongs to, the one the purge comes from (its source
// protocol address: the node moved to another NBMA address) — and
// replies unless the N flag is set. Static, server and local entries are
// never purged. A CIE covering an entry its sender does not own is
// refused (counted once, whatever else it purged); a purge of nothing its
// sender owns is not answered.
//
// The work per CIE is the sender's entries under its prefix (the owner
// index) and a lookup, never the entries of others: a walk of the prefix
// looks only as far as the first entry the sender does not own.
func (e *Engine) handlePurgeRequest(p *wire.Packet, raw []byte, from netip.Addr) {
	if e.refuseUnknown(p, raw, from) {
		return
	}
	server := e.trusted(from)
	owned, refused, pending := 0, 0, 0
	// Bindings of the tunnel address the purge comes from, which the
	// sender's identity may prove from another NBMA address (it moved).
	claimant := netip.Addr{}
	if e.deps.Verifier != nil && p.SrcProto.BitLen() == e.own.BitLen() {
		claimant = p.SrcProto
	}
	var proven []*entry
	var again []*entry // purged, to resolve again if traffic uses them
	for _, c := range p.CIEs {
		addr := c.Proto
		if !addr.IsValid() {
			addr = p.SrcProto
		}
		if addr.BitLen() != e.own.BitLen() {
			continue
		}
		bits := int(c.PrefixLen)
		if bits == 0 || bits == 0xff || bits > addr.BitLen() {
			bits = addr.BitLen()
		}
		pf := netip.PrefixFrom(addr, bits).Masked()
		if pf.Contains(e.own) {
			n := e.nhsByNBMA(from)
			if n == nil {
				refused++
				e.refuse(RefusedPurge, from, pf, "only a server purges this node's registration")
				continue
			}
			owned++
			if n.active && !e.stopping {
				e.log.Info("next hop server purged our registration", zap.Stringer("nhs", from))
				n.failures, n.attempt = 0, 0
				e.scheduleRegister(n, time.Second)
			}
			continue
		}
		// The sender's entries under the prefix: ranges of the owner
		// index (collected first: removing changes it).
		mine := e.cache.owned(byNBMA, from, pf)
		mine = append(mine, e.cache.owned(bySrc, from, pf)...)
		if server {
			mine = append(mine, e.cache.owned(byServer, netip.Addr{}, pf)...)
		}
		for _, en := range mine {
			if e.cache.get(en.proto) != en || !purgeOwns(en, from, server) {
				continue
			}
			owned++
			e.limits.forgetRedirect(en.proto, e.now)
			e.removeEntry(en, CausePurged)
			again = append(again, en)
		}
		if claimant.IsValid() {
			for _, en := range e.cache.owned(byOwner, claimant, pf) {
				if en.typ == TypeCached || en.typ == TypeShortcut {
					proven = append(proven, en)
				}
			}
		}
		// What is left under the prefix is another's, unless the
		// sender's identity may prove it or it is never purged: the first
		// such entry refuses the CIE.
		var other *entry
		e.cache.under(pf, func(en *entry) bool {
			switch en.typ {
			case TypeCached, TypeShortcut, TypeDynamic, TypeNegative, TypeIncomplete:
			default:
				return true // never purged
			}
			if claimant.IsValid() && ownerOf(en) == claimant || purgeOwns(en, from, server) {
				return true
			}
			other = en
			return false
		})
		if other != nil {
			refused++
			e.refuse(RefusedPurge, from, pf, fmt.Sprintf("%s %s under %s is not %s's", other.typ, other.proto, pf, from))
		}
	}
	for _, en := range again {
		e.resolveAgain(en)
	}
	if len(proven) > 0 {
		pending++
		o := claimant
		c := Claim{NBMA: from, Proto: o, Packet: "purge request", From: from}
		e.verifyClaim(c, false, func() {
			var again []*entry
			for _, en := range proven {
				if e.cache.get(en.proto) == en {
					e.limits.forgetRedirect(en.proto, e.now)
					e.removeEntry(en, CausePurged)
					again = append(again, en)
				}
			}
			for _, en := range again {
				e.resolveAgain(en)
			}
		}, func(reason string, identity bool) {
			if identity {
				e.refuse(RefusedPurge, from, hostPrefix(o), fmt.Sprintf("%d entries of %s: %s", len(proven), o, reason))
			}
		})
	}
	if p.Flags&wire.PurgeFlagN != 0 || (refused > 0 && owned == 0 && pending == 0) {
		return
	}
	reply := &wire.Packet{
		AddrFamily: p.AddrFamily, ProtoType: p.ProtoType, HopCount: HopCount,
		Type: wire.TypePurgeReply, Flags: p.Flags, RequestID: p.RequestID,
		SrcNBMA: p.SrcNBMA, SrcNBMAType: p.SrcNBMAType, SrcProto: p.SrcProto, DstProto: p.DstProto,
		CIEs: append([]wire.CIE(nil), p.CIEs...),
	}
	reply.Extensions = e.replyExtensions(p, nil, nil)
	e.send(reply, from, "shortcut", p.SrcProto)
}

// purgeOwns reports whether a purge from the node at from may remove en
// (a server's, when server): a registration from its client's address, a
// binding or shortcut from where it goes or the node it was learned from,
// the negative and incomplete entries from a server.
func purgeOwns(en *entry, from netip.Addr, server bool) bool {
	switch en.typ {
	case TypeCached, TypeShortcut:
		return en.nbma == from || en.src == from
	case TypeNegative, TypeIncomplete:
		return server
	case TypeDynamic:
		return en.nbma == from
	}
	return false
}

// ownerOf is the tunnel address of the node a resolved binding or
// shortcut belongs to.
func ownerOf(en *entry) netip.Addr {
	switch {
	case en.typ == TypeShortcut:
		return en.nextHop
	case en.typ == TypeCached && en.host():
		return en.proto.Addr()
	}
	return netip.Addr{}
}

// handlePurgeReply ends an outstanding purge.
func (e *Engine) handlePurgeReply(p *wire.Packet, from netip.Addr) {
	if p.SrcProto != e.own {
		e.stats.drop("not-for-us")
		return
	}
	if r := e.matchReply(p, from); r != nil {
		r.onReply(p, from)
	}
}
