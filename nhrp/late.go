package nhrp

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// lateReq is a try of a resolution that gave up for want of a reply
// (resolveTries sent, none answered) and whose answer is still taken
// while the negative entry it left stands. A responder that must first
// bring up an SA to this node answers only once IKE is done, which under
// load takes longer than the tries: without this, its answer would be
// dropped and the shortcut would wait for the negative entry to run out
// and for traffic to ask again.
type lateReq struct {
	target netip.Addr // the address resolved
	to     netip.Addr // where this try went
	until  time.Time  // when the negative entry runs out
}

// keepLate remembers the tries of a resolution that just failed for no
// reply, while its negative entry stands. At most MaxPending tries are
// kept; each is forgotten when its entry would run out.
func (e *Engine) keepLate(r *resolution, tos map[uint32]netip.Addr) {
	neg := e.cache.get(hostPrefix(r.target))
	if neg == nil || neg.typ != TypeNegative || r.renew != nil {
		return
	}
	if e.late == nil {
		e.late = make(map[uint32]lateReq)
	}
	until := e.now.Add(e.cfg.NegativeTTL)
	var kept []uint32
	for _, id := range r.ids {
		to, ok := tos[id]
		if !ok || len(e.late) >= e.cfg.Limits.MaxPending {
			continue
		}
		e.late[id] = lateReq{target: r.target, to: to, until: until}
		kept = append(kept, id)
	}
	if len(kept) == 0 {
		return
	}
	e.sched.at(until, func() {
		for _, id := range kept {
			if lr, ok := e.late[id]; ok && !lr.until.After(e.now) {
				delete(e.late, id)
			}
		}
	})
}

// lateMatch takes a Resolution Reply to a try kept by keepLate: from the
// address that try went to (or, answered directly, naming it as the
// server it went through) and while the negative entry it left is the
// only thing known of its target. The resolution starts again with the
// reply as its answer: the negative entry goes, and resolutionReply checks
// and installs what the reply says, as it would have on time. handled is
// false when the reply answers no kept try; a reply from elsewhere is
// refused, one overtaken by what was learnt since is dropped (both nil).
func (e *Engine) lateMatch(p *wire.Packet, from netip.Addr) (_ *pendingReq, handled bool) {
	lr, ok := e.late[p.RequestID]
	if !ok || p.Type != wire.TypeResolutionReply || lr.until.Before(e.now) {
		return nil, false
	}
	direct := e.trusted(lr.to) && e.viaTransit(p, lr.to)
	if from != lr.to && !direct {
		e.refuse(RefusedReplyUnmatched, from, prefixOf(p.DstProto), fmt.Sprintf("late %v %d came from %s, the request went to %s", p.Type, p.RequestID, from, lr.to))
		return nil, true
	}
	cur := e.cache.get(hostPrefix(lr.target))
	if e.resolves[lr.target] != nil || (cur != nil && cur.typ != TypeNegative) {
		e.stats.drop("unexpected-reply") // asked again or learnt otherwise meanwhile
		return nil, true
	}
	for id, x := range e.late {
		if x.target == lr.target {
			delete(e.late, id) // one late answer per resolution
		}
	}
	if cur != nil {
		e.cache.del(cur)
	}
	r := &resolution{target: lr.target, reason: "late reply", ids: []uint32{p.RequestID}}
	e.resolves[lr.target] = r
	return &pendingReq{
		id: p.RequestID, typ: wire.TypeResolutionRequest, to: lr.to,
		onReply: func(rep *wire.Packet, from netip.Addr) { e.resolutionReply(r, rep, from, lr.to) },
		onFail:  func(reason string) { e.resolutionFailed(r, reason) },
	}, true
}
