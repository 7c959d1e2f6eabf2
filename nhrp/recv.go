package nhrp

import (
	"bytes"
	"errors"
	"net/netip"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// handlePacket decodes and dispatches a received NHRP packet. Malformed
// packets are counted and dropped without a log line per packet.
func (e *Engine) handlePacket(b []byte, from netip.Addr) {
	if !e.admit(from) {
		return
	}
	p := &e.rx
	if err := p.UnmarshalBinary(b); err != nil {
		e.stats.drop("malformed")
		if e.wantPackets.Load() {
			e.emit(Event{Kind: EventPacket, NBMA: from, Packet: &PacketEvent{Dir: "in", Peer: from, Error: err.Error()}})
		}
		return
	}
	e.stats.countReceived(p.Type)
	if n := p.CIECount(); n > e.cfg.Limits.MaxCIEs {
		// Refused whole before any per-CIE work (authorisation, audit,
		// purge): told with an Error Indication (protocol error).
		e.limited(LimitCIEs)
		e.stats.drop("too-many-cies")
		e.sendError(p, b, from, wire.ErrorProtocol, 0)
		return
	}
	if e.wantPackets.Load() {
		e.emit(Event{Kind: EventPacket, NBMA: from, Packet: &PacketEvent{Dir: "in", Peer: from, Summary: p.Summary()}})
	}
	// Error Indications carry no extensions (an answer to a packet with a
	// bad password cannot carry the right one); one that does must carry
	// the right password.
	if len(e.cfg.AuthPassword) > 0 && (p.Type != wire.TypeErrorIndication || len(p.Extensions) > 0) {
		pw, ok := p.Auth()
		if !ok || !bytes.Equal(pw, e.cfg.AuthPassword) {
			e.stats.drop("auth")
			if p.Type != wire.TypeErrorIndication {
				e.sendError(p, b, from, wire.ErrorAuthenticationFailure, 0)
			}
			return
		}
	}
	switch p.Type {
	case wire.TypeRegistrationRequest:
		e.handleRegistrationRequest(p, b, from)
	case wire.TypeRegistrationReply:
		e.handleRegistrationReply(p, from)
	case wire.TypeResolutionRequest:
		e.handleResolutionRequest(p, b, from)
	case wire.TypeResolutionReply:
		e.handleResolutionReply(p, b, from)
	case wire.TypePurgeRequest:
		e.handlePurgeRequest(p, b, from)
	case wire.TypePurgeReply:
		e.handlePurgeReply(p, from)
	case wire.TypeErrorIndication:
		e.handleErrorIndication(p, from)
	case wire.TypeTrafficIndication:
		e.handleTrafficIndication(p, b, from)
	}
}

// refuseUnknown sends an Error Indication and returns true when p carries a
// compulsory extension this node does not understand; the final recipient
// of a packet must refuse it (RFC 2332 section 5.3).
func (e *Engine) refuseUnknown(p *wire.Packet, raw []byte, from netip.Addr) bool {
	if _, ok := p.UnknownCompulsory(); !ok {
		return false
	}
	e.stats.drop("unknown-extension")
	e.sendError(p, raw, from, wire.ErrorUnrecognizedExtension, extOffset(raw))
	return true
}

// extOffset returns the extension offset field of a raw packet.
func extOffset(raw []byte) uint16 {
	if len(raw) < wire.FixedHeaderLen {
		return 0
	}
	return uint16(raw[14])<<8 | uint16(raw[15])
}

// forwardTransitHasSelf reports whether this node is already in the
// Forward Transit NHS Record: the packet went round in a loop.
func (e *Engine) forwardTransitHasSelf(p *wire.Packet) bool {
	x := p.Extension(wire.ExtForwardTransit)
	if x == nil {
		return false
	}
	for _, c := range x.CIEs {
		if c.Proto == e.own {
			return true
		}
	}
	return false
}

// errNotForUs is logged when a reply does not match anything outstanding.
var errNotForUs = errors.New("no matching request")

// logLimited logs at debug level; per-packet problems are counted, not
// logged at higher levels.
func (e *Engine) logLimited(msg string, fields ...zap.Field) {
	e.log.Debug(msg, fields...)
}
