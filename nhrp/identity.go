package nhrp

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// Identity on every packet. A received packet changes state only for what
// its sender proves:
//
//   - a Resolution Request is forwarded or answered only when its source
//     address is the one registered from the NBMA address it came from
//     (with the NBMA address registered), or is proven by the sender's
//     identity (Verifier), or comes from one of this node's servers or
//     static peers, which vouch for what they forward; the NBMA address it
//     gives for its requester (source, NAT extension) must be where it
//     came from (or, registered, the address the client claimed);
//   - a reply is passed on only with NBMA addresses for its responder
//     that are where it came from or where the responder registered from,
//     and the NAT extension then says where it came from;
//   - a requester is bound, and a reply's responder and prefix installed,
//     only once the identity of the peer the binding points to proves them
//     (Verifier, after the peer is up); without a Verifier, the registered
//     NBMA address stands in: bindings vouched for by a server, or pointing
//     at the sender itself without displacing another's;
//   - replies are matched on request ID and on the address the request went
//     to (or, for a direct answer, the server it went through, named in the
//     Forward Transit record); request IDs are random;
//   - purges remove only what their sender owns, Traffic Indications count
//     only from servers, Error Indications only about a request sent to
//     their sender;
//   - the holding time of a binding learned from a resolution is capped by
//     this node's, that of a registration by MaxRegistrationHolding.
//
// Every refusal is counted (Traffic.Refused) and emitted as an
// EventPacketRefused, which the daemon audits.

// maxVerifying bounds the identity verifications in flight.
const maxVerifying = 256

// trusted reports whether nbma is one of this node's servers (whose
// identity the PeerHandler checked as it came up) or a configured static
// peer: they vouch for the packets they forward.
func (e *Engine) trusted(nbma netip.Addr) bool {
	if !nbma.IsValid() {
		return false
	}
	if n := e.nhsByNBMA(nbma); n != nil && !n.removed {
		return true
	}
	for _, m := range e.cfg.StaticMaps {
		if m.NBMA == nbma {
			return true
		}
	}
	return false
}

// refuse counts and reports a packet refused by an identity check.
func (e *Engine) refuse(kind Refusal, from netip.Addr, proto netip.Prefix, reason string) {
	e.stats.refuse(kind)
	e.emit(Event{Kind: EventPacketRefused, Refusal: kind, NBMA: from, Proto: proto, Reason: reason})
	e.logLimited("packet refused", zap.Stringer("check", kind), zap.Stringer("from", from), zap.Stringer("proto", proto), zap.String("reason", reason))
}

// registration returns the client registration covering a, if any.
func (e *Engine) registration(a netip.Addr) *entry {
	return e.cache.lookup(a, func(en *entry) bool { return en.typ == TypeDynamic })
}

// requestSource decides whether the source of a Resolution Request that
// did not come from a trusted peer is its sender's: reason says why not;
// verify asks for the Verifier's word on Claim{from, source}.
func (e *Engine) requestSource(p *wire.Packet, from netip.Addr) (reason string, verify bool) {
	if en := e.registration(p.SrcProto); en != nil {
		if en.nbma != from {
			return fmt.Sprintf("source %s is registered from %s", p.SrcProto, en.nbma), false
		}
		if p.SrcNBMA.IsValid() && p.SrcNBMA != en.claimed && p.SrcNBMA != en.nbma {
			return fmt.Sprintf("source NBMA address %s is not the registered %s", p.SrcNBMA, en.claimed), false
		}
		if x := p.Extension(wire.ExtNATAddress); x != nil {
			for _, c := range x.CIEs {
				if c.Proto == p.SrcProto && c.NBMA.IsValid() && c.NBMA != en.nbma {
					return fmt.Sprintf("NAT extension puts %s at %s, registered at %s", p.SrcProto, c.NBMA, en.nbma), false
				}
			}
		}
		return "", false
	}
	if e.deps.Verifier != nil {
		// The certificate proves the source address, not the NBMA
		// address the answer would go to: that must be where the
		// request came from (behind NAT, its NAT extension says so).
		if reason := requestNBMAReason(p, from, netip.Addr{}); reason != "" {
			return reason, false
		}
		return "", true
	}
	if en := e.cache.get(hostPrefix(p.SrcProto)); en != nil && en.nbma == from && (en.typ == TypeCached || en.typ == TypeNHS || en.typ == TypeStatic) {
		if reason := requestNBMAReason(p, from, en.claimed); reason != "" {
			return reason, false
		}
		return "", false // a peer this node resolved asks again (renewal)
	}
	return fmt.Sprintf("source %s is not registered from %s", p.SrcProto, from), false
}

// requestNBMAReason says why the NBMA address a Resolution Request gives
// for its requester is not the sender's: the NAT extension must put the
// requester where the request came from, and without it the source NBMA
// address must be that address (or claimed, the address the sender is
// known to claim behind NAT).
func requestNBMAReason(p *wire.Packet, from, claimed netip.Addr) string {
	natOK := false
	if x := p.Extension(wire.ExtNATAddress); x != nil {
		for _, c := range x.CIEs {
			if c.Proto != p.SrcProto || !c.NBMA.IsValid() {
				continue
			}
			if c.NBMA != from {
				return fmt.Sprintf("NAT extension puts %s at %s, the request came from %s", p.SrcProto, c.NBMA, from)
			}
			natOK = true
		}
	}
	if !natOK && p.SrcNBMA != from && !(claimed.IsValid() && p.SrcNBMA == claimed) {
		return fmt.Sprintf("source NBMA address %s is not %s, where the request came from", p.SrcNBMA, from)
	}
	return ""
}

// verifyClaim asks the Verifier about a claim and runs ok on the loop if
// it holds, fail otherwise (identity: the claim was refused, not merely
// left unanswered). With bringUp the peer at c.NBMA is brought up first
// (the claim is about another node than the sender); without, the sender's
// protection is up already (its packet came over it).
func (e *Engine) verifyClaim(c Claim, bringUp bool, ok func(), fail func(reason string, identity bool)) {
	e.verifyClaimVerdict(c, bringUp, func(Verdict) { ok() }, fail)
}

// verifyClaimVerdict is verifyClaim handing ok the Verifier's verdict
// (the zero Verdict without a Verifier).
func (e *Engine) verifyClaimVerdict(c Claim, bringUp bool, ok func(Verdict), fail func(reason string, identity bool)) {
	if e.deps.Verifier == nil {
		ok(Verdict{})
		return
	}
	if e.verifying >= min(maxVerifying, e.cfg.Limits.MaxPending) {
		e.limited(LimitPending)
		e.stats.suppress("verification")
		fail("too many verifications in flight", false)
		return
	}
	e.verifying++
	check := func() {
		started := e.goHook(e.cfg.AuthorizeTimeout, func(ctx context.Context) func() {
			v := e.deps.Verifier.Verify(ctx, c)
			if v.Code == 0 && ctx.Err() != nil {
				v = Verdict{Code: uint8(wire.CIEAdminProhibited), Reason: "verification timed out"}
			}
			return func() {
				e.verifying--
				if e.stopping {
					return
				}
				if v.Code == 0 {
					ok(v)
					return
				}
				fail(v.Reason, true)
			}
		})
		if !started {
			e.verifying--
			fail(errHooksBusy.Error(), false)
		}
	}
	if !bringUp {
		check()
		return
	}
	e.whenUpOr(c.NBMA, "shortcut", c.Proto, check, func(reason string, identity bool) {
		e.verifying--
		fail(reason, identity)
	})
}

// capHold returns a holding time another node chose, capped by this
// node's (0 means this node's).
func (e *Engine) capHold(theirs uint16) time.Duration {
	h := time.Duration(theirs) * time.Second
	if h == 0 || h > e.cfg.HoldingTime {
		return e.cfg.HoldingTime
	}
	return h
}

// fwdKey identifies a Resolution Request this node forwarded.
type fwdKey struct {
	src netip.Addr
	id  uint32
}

// fwdRec is where a forwarded request went, and the destination it
// asked for.
type fwdRec struct {
	to, dst netip.Addr
	at      time.Time
}

// Forwarded requests are remembered for fwdTTL, at most maxForwarded of
// them, so that only the node a request was forwarded to can answer it
// through this node.
const (
	fwdTTL       = 30 * time.Second
	maxForwarded = 8192
)

// recordForwarded remembers a forwarded request for dst.
func (e *Engine) recordForwarded(src netip.Addr, id uint32, to, dst netip.Addr) {
	k := fwdKey{src, id}
	if _, ok := e.forwarded[k]; !ok {
		e.fwdOrder = append(e.fwdOrder, k)
	}
	e.forwarded[k] = fwdRec{to: to, dst: dst, at: e.now}
	for len(e.forwarded) > min(maxForwarded, e.cfg.Limits.MaxPending) {
		e.limited(LimitPending)
		e.dropOldestForwarded()
	}
}

func (e *Engine) dropOldestForwarded() {
	k := e.fwdOrder[0]
	e.fwdOrder = e.fwdOrder[1:]
	delete(e.forwarded, k)
}

// pruneForwarded forgets forwarded requests older than fwdTTL.
func (e *Engine) pruneForwarded() {
	for len(e.fwdOrder) > 0 {
		r, ok := e.forwarded[e.fwdOrder[0]]
		if ok && e.now.Sub(r.at) < fwdTTL {
			return
		}
		e.dropOldestForwarded()
	}
}

// forwardedTo returns where this node forwarded a request and the
// destination it asked for, if it did and recently.
func (e *Engine) forwardedTo(src netip.Addr, id uint32) (to, dst netip.Addr, ok bool) {
	r, ok := e.forwarded[fwdKey{src, id}]
	if !ok || e.now.Sub(r.at) >= fwdTTL {
		return netip.Addr{}, netip.Addr{}, false
	}
	return r.to, r.dst, true
}

// viaTransit reports whether a reply's Forward Transit record names the
// server at nbma: a responder answering directly a request that went
// through that server.
func (e *Engine) viaTransit(p *wire.Packet, nbma netip.Addr) bool {
	x := p.Extension(wire.ExtForwardTransit)
	if x == nil {
		return false
	}
	var proto netip.Addr
	if n := e.nhsByNBMA(nbma); n != nil {
		proto = n.proto
	}
	for _, c := range x.CIEs {
		if c.NBMA == nbma || (proto.IsValid() && c.Proto == proto) {
			return true
		}
	}
	return false
}
