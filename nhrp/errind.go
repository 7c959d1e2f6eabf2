package nhrp

import (
	"fmt"
	"net/netip"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// maxQuoted bounds how much of the packet in error an Error Indication
// quotes.
const maxQuoted = 1024

// sendError answers the packet p (received from `from` as raw) with an
// Error Indication. It never answers an Error Indication, is rate-limited
// per peer and in all, and goes only to a peer that is up (it never brings
// up IPsec for a peer that sent garbage).
func (e *Engine) sendError(p *wire.Packet, raw []byte, from netip.Addr, code wire.ErrorCode, offset uint16) {
	if p.Type == wire.TypeErrorIndication {
		return
	}
	if !e.limits.allowErrInd(e.now, from) {
		e.stats.suppress("error-indication")
		return
	}
	if e.deps.Peers != nil {
		if pe := e.peers[from]; pe == nil || pe.state != peerUp {
			e.stats.suppress("error-indication")
			return
		}
	}
	q := raw
	if len(q) > maxQuoted {
		q = q[:maxQuoted]
	}
	ei := e.newPacket(wire.TypeErrorIndication, p.SrcProto, from)
	if ei.DstProto.IsValid() && ei.DstProto.Is4() != e.own.Is4() {
		ei.DstProto = netip.Addr{}
	}
	ei.ErrorCode, ei.ErrorOffset = code, offset
	ei.Payload = append([]byte(nil), q...)
	e.write(ei, from)
}

// handleErrorIndication counts an Error Indication and fails the request
// it answers, if it is one of ours.
func (e *Engine) handleErrorIndication(p *wire.Packet, from netip.Addr) {
	e.stats.countError(true, p.ErrorCode)
	var q wire.Packet
	if err := q.UnmarshalBinary(p.Payload); err != nil || !q.Type.IsRequest() || q.SrcProto != e.own {
		e.logLimited("error indication", zap.Stringer("from", from), zap.Stringer("code", p.ErrorCode))
		return
	}
	pr := e.pending[q.RequestID]
	if pr == nil || pr.typ != q.Type || pr.to != from {
		if !e.wasAnswered(q.RequestID) {
			e.refuse(RefusedErrorIndication, from, prefixOf(q.DstProto), fmt.Sprintf("error indication about %v %d, not a request of ours to %s", q.Type, q.RequestID, from))
		}
		return
	}
	e.log.Info("request refused by error indication",
		zap.Stringer("type", q.Type), zap.Stringer("from", from), zap.Stringer("code", p.ErrorCode))
	pr.fail("error indication: " + p.ErrorCode.String())
}
