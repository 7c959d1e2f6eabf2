package nhrp

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// regCIE is one registration of a Registration Request, being decided.
type regCIE struct {
	reg     Registration
	holding time.Duration
	mtu     uint16
	verdict Verdict
}

// handleRegistrationRequest serves a client's registration (hub). What an
// ImmediateAuthorizer decides at once is answered at once; otherwise the
// Authorizer runs in its own goroutine so one slow decision never delays
// the others, and duplicate requests while one is being decided are
// dropped.
func (e *Engine) handleRegistrationRequest(p *wire.Packet, raw []byte, from netip.Addr) {
	if e.cfg.Role != RoleHub {
		e.stats.drop("not-for-us")
		return
	}
	if e.refuseUnknown(p, raw, from) {
		return
	}
	if p.DstProto != e.own && p.DstProto != p.SrcProto {
		e.stats.drop("not-for-us")
		return
	}
	if p.SrcProto.BitLen() != e.own.BitLen() || len(p.CIEs) == 0 {
		e.stats.drop("unsupported")
		return
	}
	key := authKey{proto: p.SrcProto, nbma: from}
	if e.authorizing[key] {
		e.stats.drop("refused") // a retransmission while the first is being decided
		return
	}
	regs := make([]regCIE, len(p.CIEs))
	for i, c := range p.CIEs {
		proto := c.Proto
		if !proto.IsValid() {
			proto = p.SrcProto
		}
		bits := int(c.PrefixLen)
		if bits == 0 || bits == 0xff || bits > proto.BitLen() {
			bits = proto.BitLen()
		}
		claimed := c.NBMA
		if !claimed.IsValid() {
			claimed = p.SrcNBMA
		}
		hold := e.regHold(c.HoldingTime)
		regs[i] = regCIE{
			reg: Registration{
				Proto: netip.PrefixFrom(proto, bits).Masked(), NBMA: from, ClaimedNBMA: claimed,
				Unique: p.Flags&wire.RegFlagU != 0, HoldingTime: uint16(hold / time.Second),
			},
			holding: hold, mtu: c.MTU,
		}
	}
	if e.deps.Authorizer == nil {
		e.completeRegistration(p, from, regs)
		return
	}
	// What can be decided at once is; the rest in a goroutine.
	decided := make([]bool, len(regs))
	pending := len(regs)
	if ia, ok := e.deps.Authorizer.(ImmediateAuthorizer); ok {
		for i := range regs {
			if v, ok := ia.AuthorizeNow(regs[i].reg); ok {
				regs[i].verdict, decided[i] = v, true
				pending--
			}
		}
	}
	if pending == 0 {
		e.completeRegistration(p, from, regs)
		return
	}
	if len(e.authorizing) >= e.cfg.Limits.MaxPending {
		e.limited(LimitPending)
		busy(regs, decided, "too many registrations being authorised")
		e.completeRegistration(p, from, regs)
		return
	}
	e.authorizing[key] = true
	pkt, err := wire.Decode(raw) // p is reused for the next packet
	if err != nil {
		delete(e.authorizing, key)
		return
	}
	if !e.goHook(e.cfg.AuthorizeTimeout, func(ctx context.Context) func() {
		for i := range regs {
			if decided[i] {
				continue
			}
			regs[i].verdict = e.deps.Authorizer.Authorize(ctx, regs[i].reg)
			if ctx.Err() != nil && regs[i].verdict.Code == 0 {
				regs[i].verdict = Verdict{Code: uint8(wire.CIEAdminProhibited), Reason: "authorization timed out"}
			}
		}
		return func() {
			delete(e.authorizing, key)
			e.completeRegistration(pkt, from, regs)
		}
	}) {
		delete(e.authorizing, key)
		busy(regs, decided, errHooksBusy.Error())
		e.completeRegistration(pkt, from, regs)
	}
}

// regHold returns the holding time granted to a registration that asked
// for theirs (0: this node's), capped by MaxRegistrationHolding: an
// attacker-chosen holding time is capped by ours.
func (e *Engine) regHold(theirs uint16) time.Duration {
	h := time.Duration(theirs) * time.Second
	if h == 0 {
		h = e.cfg.HoldingTime
	}
	return min(h, e.cfg.MaxRegistrationHolding)
}

// busy refuses the registrations not decided yet with code 5
// (insufficient resources): a limit stopped their authorisation.
func busy(regs []regCIE, decided []bool, reason string) {
	for i := range regs {
		if !decided[i] {
			regs[i].verdict = Verdict{Code: uint8(wire.CIEInsufficientResources), Reason: reason}
		}
	}
}

// authKey identifies a registration being authorized.
type authKey struct {
	proto netip.Addr
	nbma  netip.Addr
}

// completeRegistration installs the accepted bindings and replies.
func (e *Engine) completeRegistration(p *wire.Packet, from netip.Addr, regs []regCIE) {
	if e.stopping {
		return
	}
	// A client that does not know our address asks for its own (FRR's
	// "nhs dynamic"): the reply names us, as FRR's hub does, and FRR takes
	// the server's address from it (RFC 2332 would copy the request's).
	dst := p.DstProto
	if dst == p.SrcProto {
		dst = e.own
	}
	// The reply is built in the engine's scratch: send encodes it before
	// it returns (a registration's reply was four allocations).
	sc := &e.regReply
	sc.pkt = wire.Packet{
		AddrFamily: p.AddrFamily, ProtoType: p.ProtoType, HopCount: HopCount,
		Type: wire.TypeRegistrationReply, Flags: p.Flags, RequestID: p.RequestID,
		SrcNBMA: p.SrcNBMA, SrcNBMAType: p.SrcNBMAType, SrcProto: p.SrcProto, DstProto: dst,
		CIEs: slices.Grow(sc.cies[:0], len(p.CIEs))[:len(p.CIEs)],
	}
	reply := &sc.pkt
	var natExtra []wire.CIE
	for i := range regs {
		r := &regs[i]
		code := wire.CIECode(r.verdict.Code)
		if code == wire.CIESuccess && !r.verdict.Proven {
			if reason := unprovenRegistration(p.SrcProto, r.reg.Proto); reason != "" {
				code, r.verdict.Reason = wire.CIEAdminProhibited, reason
			}
		}
		if code == wire.CIESuccess {
			code = e.bind(r, p.RequestID)
		}
		if code != wire.CIESuccess {
			reason := r.verdict.Reason
			if reason == "" {
				reason = code.String()
			}
			e.stats.drop("refused")
			e.emit(Event{Kind: EventRegistrationRefused, Proto: r.reg.Proto, NBMA: r.reg.NBMA,
				ClaimedNBMA: r.reg.ClaimedNBMA, Code: uint8(code), Reason: reason, Identity: r.verdict.Identity})
			if e.limits.allowLog(e.now, from, reason) {
				// A warning (journald priority 4), once a minute per
				// client and reason: every refusal is counted and emitted.
				e.log.Warn("registration refused", zap.Stringer("proto", r.reg.Proto), zap.Stringer("nbma", from),
					zap.Stringer("code", code), zap.String("reason", reason))
			}
		}
		c := p.CIEs[i]
		c.Code = code
		c.HoldingTime = uint16(r.holding / time.Second) // what was granted: the client refreshes by it
		reply.CIEs[i] = c
		if code == wire.CIESuccess && r.reg.ClaimedNBMA != r.reg.NBMA {
			natExtra = append(natExtra, wire.CIE{PrefixLen: uint8(r.reg.Proto.Bits()), MTU: r.mtu,
				HoldingTime: uint16(r.holding / time.Second), NBMA: r.reg.NBMA, Proto: r.reg.Proto.Addr()})
		}
	}
	resp := e.ownCIE(from, uint8(e.own.BitLen()))
	reply.Extensions, sc.extCIEs = e.replyExtensionsInto(sc.exts[:0], sc.extCIEs[:0], p, &resp, natExtra)
	sc.cies, sc.exts = reply.CIEs, reply.Extensions
	e.send(reply, from, "client", p.SrcProto)
	sc.pkt = wire.Packet{} // hold nothing of the request
}

// unprovenRegistration says why a registration of proto that nothing
// proves (no Verdict.Proven: without IPsec, the policy alone) must be
// refused, or "": the client registers its own address — a host CIE must
// be the request's source protocol address src, a prefix CIE must contain
// it. Otherwise a registered spoke could register another's tunnel
// address from its own NBMA address (taking over a no-unique binding) or
// claim any unheld address. Cisco and FRR register their own address
// (the CIE's client address is the source or left out).
func unprovenRegistration(src netip.Addr, proto netip.Prefix) string {
	switch {
	case proto.IsSingleIP() && proto.Addr() != src:
		return fmt.Sprintf("%s is not the request's source address %s, and nothing proves it is the client's", proto, src)
	case !proto.IsSingleIP() && !proto.Contains(src):
		return fmt.Sprintf("%s does not contain the request's source address %s, and nothing proves it is the client's", proto, src)
	}
	return ""
}

// replyScratch is the engine's registration reply, reused: send encodes a
// packet before it returns.
type replyScratch struct {
	pkt     wire.Packet
	cies    []wire.CIE
	exts    []wire.Extension
	extCIEs []wire.CIE
}

// bind installs or refreshes a client's binding and returns the CIE code:
// a binding of higher rank (static, local) is never replaced; a unique
// binding is never taken over by another NBMA address (code 14), and a
// registration from the same address refreshes it.
func (e *Engine) bind(r *regCIE, reqID uint32) wire.CIECode {
	cur := e.cache.get(r.reg.Proto)
	if cur != nil && cur.typ > TypeDynamic {
		return wire.CIEAdminProhibited
	}
	if cur != nil && cur.typ == TypeDynamic && cur.nbma != r.reg.NBMA && cur.flags&FlagUnique != 0 {
		if !r.verdict.Proven {
			return wire.CIEAlreadyRegistered
		}
		e.moveBinding(cur, r, reqID)
		return wire.CIESuccess
	}
	flags := FlagRegistered
	if r.reg.Unique {
		flags |= FlagUnique
	}
	if r.reg.ClaimedNBMA != r.reg.NBMA {
		flags |= FlagNAT
	}
	if cur != nil && cur.typ == TypeDynamic && cur.nbma == r.reg.NBMA {
		// A refresh.
		cur.flags = flags | cur.flags&FlagUsed
		cur.claimed, cur.holding, cur.mtu, cur.reqID = r.reg.ClaimedNBMA, uint16(r.holding/time.Second), r.mtu, reqID
		renewed := false
		cur.unconfirmed = false // a restored registration, refreshed by its client
		if r.verdict.Identity != "" {
			renewed = cur.identity != r.verdict.Identity || !sameAttrs(cur.attrs, r.verdict.Attrs)
			cur.identity, cur.attrs, cur.nets = r.verdict.Identity, r.verdict.Attrs, r.verdict.Networks
		}
		e.expireAt(cur, e.now.Add(r.holding))
		if renewed {
			// A renewed certificate with other fields (AS, networks):
			// observers such as BGP update the neighbour now, not at
			// their next resynchronisation.
			e.emit(Event{Kind: EventRegistered, Proto: cur.proto, NBMA: cur.nbma, ClaimedNBMA: cur.claimed,
				HoldingTime: r.holding, Identity: cur.identity, Attrs: cur.attrs, Cause: CauseRenewed})
		}
		return wire.CIESuccess
	}
	if cur != nil {
		e.removeEntry(cur, CauseReplaced)
	} else if !e.roomFor(TypeDynamic) {
		return wire.CIEInsufficientResources
	}
	en := &entry{
		typ: TypeDynamic, proto: r.reg.Proto, nbma: r.reg.NBMA, claimed: r.reg.ClaimedNBMA,
		flags: flags, created: e.now, holding: uint16(r.holding / time.Second), mtu: r.mtu,
		reqID: reqID, identity: r.verdict.Identity, attrs: r.verdict.Attrs, nets: r.verdict.Networks,
	}
	e.addEntry(en)
	e.expireAt(en, e.now.Add(r.holding))
	e.emit(Event{Kind: EventRegistered, Proto: en.proto, NBMA: en.nbma, ClaimedNBMA: en.claimed,
		HoldingTime: r.holding, Identity: en.identity, Attrs: en.attrs})
	return wire.CIESuccess
}

// sameAttrs reports whether two sets of identity fields are equal.
func sameAttrs(a, b map[string][]string) bool {
	return maps.EqualFunc(a, b, slices.Equal[[]string])
}
