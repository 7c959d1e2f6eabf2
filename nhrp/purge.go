package nhrp

import (
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
	for nbma, proto := range en.told {
		e.sendPurge(nbma, proto, []netip.Prefix{en.proto}, e.stopping)
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
	for _, en := range e.cache.all() {
		if en.typ != TypeLocal || en.proto == hostPrefix(e.own) || len(en.told) == 0 {
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
		e.scheduleLocalCheck()
	})
}

// handlePurgeRequest removes what a peer says is no longer valid and
// replies unless the N flag is set. A purge from a server for this node's
// own address means the server dropped the registration (it restarted, or
// an operator cleared it): register again at once.
func (e *Engine) handlePurgeRequest(p *wire.Packet, raw []byte, from netip.Addr) {
	if e.refuseUnknown(p, raw, from) {
		return
	}
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
			if n := e.nhsByNBMA(from); n != nil && n.active && !e.stopping {
				e.log.Info("next hop server purged our registration", zap.Stringer("nhs", from))
				n.failures, n.attempt = 0, 0
				e.scheduleRegister(n, time.Second)
			}
			continue
		}
		e.limits.forgetRedirect(pf)
		for _, en := range e.cache.all() {
			if !pf.Contains(en.proto.Addr()) || en.proto.Bits() < pf.Bits() {
				continue
			}
			switch en.typ {
			case TypeCached, TypeShortcut, TypeNegative, TypeIncomplete:
				e.removeEntry(en, "purged")
			case TypeDynamic:
				if en.nbma == from {
					e.removeEntry(en, "purged by the client")
				}
			}
		}
	}
	if p.Flags&wire.PurgeFlagN != 0 {
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

// handlePurgeReply ends an outstanding purge.
func (e *Engine) handlePurgeReply(p *wire.Packet, from netip.Addr) {
	if p.SrcProto != e.own {
		e.stats.drop("not-for-us")
		return
	}
	if r := e.takePending(p.RequestID, p.Type); r != nil {
		r.onReply(p, from)
		return
	}
	e.stats.drop("unexpected-reply")
}
