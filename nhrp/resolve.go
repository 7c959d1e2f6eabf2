package nhrp

import (
	"fmt"
	"net/netip"
	"time"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// resolveTries is how many Resolution Requests are sent (1 s, 2 s, 4 s
// apart) before a resolution fails.
const resolveTries = 3

// resolution is a Resolution Request this node is waiting on.
type resolution struct {
	target netip.Addr
	reason string
	ids    []uint32 // every try's request ID: a late answer to one counts
	tries  int
	timer  *timer
	// verifying: an answer came and its claims are being verified.
	verifying bool
	// renew is the shortcut or binding being renewed; it stays in place
	// meanwhile.
	renew *entry
	// waiters run on the loop once the resolution ended, answered or not
	// (another resolution waiting on this one: confirmResponder).
	waiters []func()
}

// handleMiss starts a resolution for a tunnel next hop without a
// neighbour entry (DMVPN phase 2).
func (e *Engine) handleMiss(m gre.Miss) {
	nh := m.NextHop
	if !nh.IsValid() || e.isOwn(nh) || (e.ownPfx.IsValid() && !e.ownPfx.Contains(nh)) {
		return
	}
	if en := e.cache.get(hostPrefix(nh)); en != nil {
		if n, ok := neighborOf(en); ok {
			// The kernel lost a neighbour the cache has: program it again.
			e.whenUp(en.nbma, roleOf(en.typ), nh, func() {
				if e.cache.get(en.proto) == en {
					e.kern.setNeighbor(n)
					en.neigh = true
				}
			})
			return
		}
	}
	e.resolve(nh, "miss", nil)
}

// resolve sends a Resolution Request for target unless one is in flight,
// a usable binding exists or a recent resolution failed.
func (e *Engine) resolve(target netip.Addr, reason string, renew *entry) {
	if e.stopping || e.isOwn(target) || e.resolves[target] != nil {
		return
	}
	if renew == nil {
		if en := e.cache.lookup(target, nil); en != nil {
			switch {
			case en.typ == TypeNegative || en.typ == TypeIncomplete:
				e.stats.suppress("resolution")
				return
			case en.typ >= TypeCached && en.typ != TypeLocal && (en.nbma.IsValid() || en.nextHop.IsValid()):
				return // already resolved
			}
		}
		if e.cache.get(hostPrefix(target)) == nil && e.roomFor(TypeIncomplete) {
			inc := &entry{typ: TypeIncomplete, proto: hostPrefix(target), created: e.now}
			e.cache.put(inc)
		}
	}
	if len(e.resolves) >= e.cfg.Limits.MaxPending {
		e.limited(LimitPending)
		return
	}
	r := &resolution{target: target, reason: reason, renew: renew}
	e.resolves[target] = r
	e.sendResolution(r)
}

// resolutionTarget picks the NBMA address a Resolution Request for target
// goes to: the tunnel next hop of the route to it, else the preferred NHS.
func (e *Engine) resolutionTarget(target netip.Addr) (netip.Addr, netip.Addr) {
	if ri, ok := e.route(target); ok && ri.NextHop.IsValid() && ri.NextHop != target {
		if en := e.cache.get(hostPrefix(ri.NextHop)); en != nil && en.nbma.IsValid() && en.typ >= TypeCached {
			return en.nbma, ri.NextHop
		}
	}
	if n := e.upNHS(); n != nil {
		return n.nbma, n.proto
	}
	return netip.Addr{}, netip.Addr{}
}

func (e *Engine) sendResolution(r *resolution) {
	to, toProto := e.resolutionTarget(r.target)
	if !to.IsValid() {
		e.resolutionFailed(r, "no next hop server")
		return
	}
	r.tries++
	id := e.nextReqID()
	r.ids = append(r.ids, id)
	p := e.newPacket(wire.TypeResolutionRequest, r.target, to)
	p.Flags = wire.ResFlagQ | wire.ResFlagA | wire.ResFlagS | wire.ResFlagNAT
	p.RequestID = id
	p.CIEs = []wire.CIE{{MTU: e.mtu(), HoldingTime: e.holding()}}
	p.Extensions = e.requestExtensions(true, e.natCIEs())
	e.addPending(&pendingReq{
		id: id, typ: wire.TypeResolutionRequest, to: to,
		onReply: func(rep *wire.Packet, from netip.Addr) { e.resolutionReply(r, rep, from, to) },
		onFail:  func(reason string) { e.resolutionFailed(r, reason) },
	})
	role := "nhs"
	if e.nhsByNBMA(to) == nil {
		role = "shortcut"
	}
	e.send(p, to, role, toProto)
	r.timer.Stop()
	r.timer = e.sched.after(e.now, backoff(r.tries, 4*time.Second), func() {
		if e.resolves[r.target] != r || r.verifying {
			return
		}
		if r.tries >= resolveTries {
			tos := make(map[uint32]netip.Addr, len(r.ids))
			for _, id := range r.ids {
				if pr := e.pending[id]; pr != nil {
					tos[id] = pr.to
				}
			}
			e.resolutionFailed(r, "no reply")
			e.keepLate(r, tos)
			return
		}
		e.sendResolution(r)
	})
}

// resolutionFailed ends a resolution without an answer: a negative entry
// keeps it from being retried for NegativeTTL.
func (e *Engine) resolutionFailed(r *resolution, reason string) {
	if e.resolves[r.target] != r {
		return
	}
	e.endResolution(r)
	e.emit(Event{Kind: EventResolutionFailed, Proto: hostPrefix(r.target), Reason: reason})
	if r.renew != nil {
		return // the renewed binding runs out on its own
	}
	p := hostPrefix(r.target)
	if cur := e.cache.get(p); cur != nil && cur.typ > TypeNegative {
		return
	} else if cur != nil {
		e.cache.del(cur)
	}
	if !e.roomFor(TypeNegative) {
		return
	}
	neg := &entry{typ: TypeNegative, proto: p, created: e.now}
	e.cache.put(neg)
	e.expireAt(neg, e.now.Add(e.cfg.NegativeTTL))
}

// endResolution forgets an outstanding resolution and its incomplete
// entry.
func (e *Engine) endResolution(r *resolution) {
	r.timer.Stop()
	for _, id := range r.ids {
		if e.pending[id] != nil {
			delete(e.pending, id)
			e.answered(id) // a late answer to another try is no forgery
		}
	}
	delete(e.resolves, r.target)
	if en := e.cache.get(hostPrefix(r.target)); en != nil && en.typ == TypeIncomplete {
		e.cache.del(en)
	}
	for _, w := range r.waiters {
		e.sched.after(e.now, 0, w) // after what ended it is installed
	}
	r.waiters = nil
}

// handleResolutionReply delivers a reply to its request, or forwards a
// reply for another node along the reverse path.
func (e *Engine) handleResolutionReply(p *wire.Packet, raw []byte, from netip.Addr) {
	if p.SrcProto != e.own {
		e.forwardReply(p, raw, from)
		return
	}
	r := e.matchReply(p, from)
	if r == nil {
		return
	}
	if e.refuseUnknown(p, raw, from) {
		r.fail("unrecognized extension in reply")
		return
	}
	r.onReply(p, from)
}

// matchReply returns the request a reply answers and forgets it: the
// request ID must be one outstanding of the reply's type, and the reply
// must come from the address the request went to or, for a Resolution
// Reply answered directly by its responder, name that address (the server
// it went through) in its Forward Transit record. A Resolution Reply to a
// resolution that gave up waiting is taken on the same terms while its
// negative entry stands (lateMatch). Anything else is refused (a late
// duplicate only dropped).
func (e *Engine) matchReply(p *wire.Packet, from netip.Addr) *pendingReq {
	r := e.pending[p.RequestID]
	if r == nil || r.typ.Reply() != p.Type {
		if lr, handled := e.lateMatch(p, from); handled {
			return lr
		}
		if e.wasAnswered(p.RequestID) {
			e.stats.drop("unexpected-reply")
			return nil
		}
		e.refuse(RefusedReplyUnmatched, from, prefixOf(p.DstProto), fmt.Sprintf("%v with request ID %d answers no request of ours", p.Type, p.RequestID))
		return nil
	}
	direct := p.Type == wire.TypeResolutionReply && e.trusted(r.to) && e.viaTransit(p, r.to)
	if from != r.to && !direct {
		e.refuse(RefusedReplyUnmatched, from, prefixOf(p.DstProto), fmt.Sprintf("%v %d came from %s, the request went to %s", p.Type, p.RequestID, from, r.to))
		return nil
	}
	delete(e.pending, p.RequestID)
	e.answered(p.RequestID)
	return r
}

// resolutionReply installs what a positive reply says: a binding for a
// tunnel address (phase 2), or a shortcut route for the prefix behind the
// responder plus the responder's binding (phase 3) — once the identity of
// the responder proves them. to is where the request went.
func (e *Engine) resolutionReply(r *resolution, p *wire.Packet, from, to netip.Addr) {
	if e.resolves[r.target] != r || r.verifying {
		return
	}
	if len(p.CIEs) == 0 || p.CIEs[0].Code != wire.CIESuccess {
		code := wire.CIENoBinding
		if len(p.CIEs) > 0 {
			code = p.CIEs[0].Code
		}
		e.resolutionFailed(r, "negative reply: "+code.String())
		return
	}
	// The prefix length applies to the address asked for (RFC 2332
	// section 5.2.2); the CIE's client address is the node to send to:
	// the responder's tunnel address for a network behind it (FRR and
	// this engine), the address asked for in a host answer.
	c := p.CIEs[0]
	bits := int(c.PrefixLen)
	if bits == 0 || bits == 0xff || bits > r.target.BitLen() {
		bits = r.target.BitLen()
	}
	prefix := netip.PrefixFrom(r.target, bits).Masked()

	// The responder: its tunnel address from the Responder Address
	// extension, else the CIE's. Its NBMA address: the sender itself when
	// it answered directly (behind NAT, the address its packet came
	// from); through a server, the CIE's, with NAT taken into account.
	respProto, respNBMA := netip.Addr{}, c.NBMA
	if x := p.Extension(wire.ExtResponderAddress); x != nil && len(x.CIEs) > 0 {
		respProto = x.CIEs[0].Proto
		if !respNBMA.IsValid() {
			respNBMA = x.CIEs[0].NBMA
		}
	}
	if !respProto.IsValid() && c.Proto.BitLen() == r.target.BitLen() {
		respProto = c.Proto
	}
	if !respProto.IsValid() && prefix.IsSingleIP() {
		respProto = prefix.Addr()
	}
	viaServer := from == to && e.trusted(from)
	if viaServer {
		if x := p.Extension(wire.ExtNATAddress); x != nil {
			for _, nc := range x.CIEs {
				if nc.Proto == respProto && nc.NBMA.IsValid() {
					respNBMA = nc.NBMA
				}
			}
		}
		if !respNBMA.IsValid() {
			respNBMA = from
		}
	} else {
		respNBMA = from
	}

	if reason := e.checkReply(r.target, prefix, respProto); reason != "" {
		e.logLimited("resolution reply refused", zap.Stringer("target", r.target), zap.Stringer("prefix", prefix), zap.String("reason", reason))
		e.stats.drop("unsupported")
		e.resolutionFailed(r, "invalid reply: "+reason)
		return
	}

	hold := e.capHold(c.HoldingTime)
	flags := FlagRouter
	if p.Flags&wire.ResFlagA != 0 {
		flags |= FlagAuthoritative
	}
	if respNBMA != c.NBMA && c.NBMA.IsValid() {
		flags |= FlagNAT // the responder is reached elsewhere than it says
	}
	isShortcut := func(prefix netip.Prefix) bool { return !(prefix.IsSingleIP() && prefix.Addr() == respProto) }
	// A prefix over tunnel addresses is bound as the host asked for, or
	// not at all (tunnelPrefix); the claim checked is what is bound.
	given, narrowed := prefix, ""
	if isShortcut(prefix) {
		p, why, refuse := e.tunnelPrefix(r.target, prefix, respProto)
		if refuse != "" {
			e.refuse(RefusedReplyIdentity, from, prefix, refuse)
			e.resolutionFailed(r, "refused: "+refuse)
			return
		}
		prefix, narrowed = p, why
	}
	claim := Claim{NBMA: respNBMA, Proto: respProto, Packet: "resolution reply", From: from}
	claimed := hostPrefix(respProto)
	if isShortcut(prefix) {
		claim.Prefix, claimed = prefix, prefix
	}
	// install puts the answer in place; nets says the responder's
	// identity proved the networks behind it (a certificate's OU=NET=),
	// else the prefix is bounded (unprovenPrefix).
	install := func(nets bool) {
		if e.resolves[r.target] != r {
			return
		}
		prefix := prefix
		if narrowed != "" {
			e.refuse(RefusedReplyIdentity, from, given, narrowed+": installed as "+prefix.String())
		}
		if !nets && isShortcut(prefix) {
			if p, why := e.unprovenPrefix(r.target, prefix, respProto, respNBMA); p != prefix {
				e.refuse(RefusedReplyIdentity, from, prefix, why+": installed as "+p.String())
				prefix = p
			}
		}
		e.endResolution(r)
		// The responder's own binding (its tunnel address → NBMA).
		bind := e.installBinding(hostPrefix(respProto), respNBMA, c.NBMA, from, flags, hold, c.MTU)
		if !isShortcut(prefix) {
			if bind != nil {
				e.scheduleRenew(bind)
			}
			return // phase 2: the binding is all there is
		}
		e.installShortcut(prefix, respProto, respNBMA, from, flags, hold)
	}
	refused := func(reason string) {
		e.refuse(RefusedReplyIdentity, from, claimed, reason)
		e.resolutionFailed(r, "refused: "+reason)
	}
	if !e.inTunnel(respProto) {
		refused(fmt.Sprintf("responder address %s is outside the tunnel network %s", respProto, e.ownPfx.Masked()))
		return
	}
	if e.deps.Verifier == nil {
		// The registered NBMA address stands in for the certificate: a
		// server vouches for what it passes on; a responder answering
		// directly binds its address only once a server proves it.
		if viaServer {
			install(false)
			return
		}
		ok, reason := e.directResponder(r.target, respProto, respNBMA)
		switch {
		case reason != "":
			refused(reason)
		case ok:
			install(false)
		default:
			e.confirmResponder(r, respProto, respNBMA, func() { install(false) }, refused)
		}
		return
	}
	r.verifying = true
	r.timer.Stop()
	e.verifyClaimVerdict(claim, true, func(v Verdict) { install(len(v.Networks) > 0) }, func(reason string, identity bool) {
		if e.resolves[r.target] != r {
			return
		}
		r.verifying = false
		if identity {
			refused(reason)
			return
		}
		e.resolutionFailed(r, reason)
	})
}

// checkReply says why a resolution reply must not be used, or "".
func (e *Engine) checkReply(target netip.Addr, prefix netip.Prefix, resp netip.Addr) string {
	switch {
	case !prefix.Contains(target):
		return "prefix does not contain the address asked for"
	case !resp.IsValid():
		return "no responder address"
	case resp.BitLen() != e.own.BitLen():
		return "responder address family"
	case !prefix.IsSingleIP() && prefix.Bits() < e.cfg.MinShortcutPrefix:
		return "prefix shorter than the minimum"
	case !prefix.IsSingleIP() && prefix.Contains(e.own):
		return "prefix covers this node's tunnel address"
	case e.isOwn(resp):
		return "responder is this node"
	}
	return ""
}

// installBinding puts a resolved tunnel address → NBMA binding in the
// cache, unless a binding of higher rank exists. It returns the entry in
// place.
// src is the NBMA address of the node the binding was learned from (it
// may purge it).
func (e *Engine) installBinding(p netip.Prefix, nbma, claimed, src netip.Addr, flags Flags, hold time.Duration, mtu uint16) *entry {
	cur := e.cache.get(p)
	if cur != nil && cur.typ > TypeCached {
		return nil // a registration, an NHS or a static binding wins
	}
	if cur != nil && cur.typ == TypeCached && cur.nbma == nbma {
		cur.flags |= flags
		e.cache.setSrc(cur, src)
		cur.holding = uint16(hold / time.Second)
		e.expireAt(cur, e.now.Add(hold))
		return cur
	}
	if cur != nil {
		e.removeEntry(cur, CauseReplaced)
	} else if !e.roomFor(TypeCached) {
		return nil
	}
	en := &entry{typ: TypeCached, proto: p, nbma: nbma, claimed: claimed, src: src, flags: flags,
		created: e.now, holding: uint16(hold / time.Second), mtu: mtu}
	e.addEntry(en)
	e.expireAt(en, e.now.Add(hold))
	return en
}

// installShortcut puts a shortcut route for prefix via the responder in
// the cache and the kernel.
func (e *Engine) installShortcut(prefix netip.Prefix, via, nbma, src netip.Addr, flags Flags, hold time.Duration) {
	cur := e.cache.get(prefix)
	if cur != nil && cur.typ > TypeShortcut {
		return
	}
	if cur != nil && cur.typ == TypeShortcut && cur.nextHop == via {
		e.cache.setSrc(cur, src)
		cur.holding = uint16(hold / time.Second)
		e.expireAt(cur, e.now.Add(hold))
		e.scheduleRenew(cur)
		return
	}
	if cur != nil {
		e.removeEntry(cur, CauseReplaced)
	} else if !e.roomFor(TypeShortcut) {
		return
	}
	en := &entry{typ: TypeShortcut, proto: prefix, nbma: nbma, nextHop: via, src: src, flags: flags,
		created: e.now, holding: uint16(hold / time.Second)}
	e.addEntry(en)
	e.expireAt(en, e.now.Add(hold))
	e.scheduleRenew(en)
	e.emit(Event{Kind: EventShortcutUp, Proto: prefix, NextHop: via, NBMA: nbma, HoldingTime: hold})
}
