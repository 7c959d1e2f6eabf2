package nhrp

import (
	"net/netip"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// newPacket returns a packet of type t from this node to dst (a protocol
// address), to be sent toward the NBMA address `toward`.
func (e *Engine) newPacket(t wire.Type, dst, toward netip.Addr) *wire.Packet {
	return &wire.Packet{
		Type: t, HopCount: HopCount,
		SrcNBMA: e.localNBMA(toward), SrcProto: e.own, DstProto: dst,
	}
}

// ownCIE returns a CIE describing this node, as put in Responder Address
// and transit records.
func (e *Engine) ownCIE(toward netip.Addr, prefixLen uint8) wire.CIE {
	nbma := e.publicNBMA()
	if !nbma.IsValid() {
		nbma = e.localNBMA(toward)
	}
	return wire.CIE{
		PrefixLen: prefixLen, MTU: e.mtu(), HoldingTime: e.holding(),
		NBMA: nbma, Proto: e.own,
	}
}

// authExt returns the Authentication extension, if one is configured.
func (e *Engine) authExt() []wire.Extension {
	if len(e.cfg.AuthPassword) == 0 {
		return nil
	}
	return []wire.Extension{wire.NewCiscoAuth(e.cfg.AuthPassword)}
}

// natCIEs returns what this node puts in the NAT Address extension of its
// requests and replies: its public address, once a server told it.
func (e *Engine) natCIEs() []wire.CIE {
	if pub := e.publicNBMA(); pub.IsValid() {
		return []wire.CIE{{PrefixLen: uint8(e.own.BitLen()), NBMA: pub, Proto: e.own}}
	}
	return nil
}

// requestExtensions returns the extensions of a request in Cisco's order:
// Responder Address (for requests that get one back), Forward and Reverse
// Transit NHS Records, Authentication, NAT Address.
func (e *Engine) requestExtensions(responder bool, nat []wire.CIE) []wire.Extension {
	exts := make([]wire.Extension, 0, 6)
	if responder {
		exts = append(exts, wire.Extension{Type: wire.ExtResponderAddress, Compulsory: true})
	}
	exts = append(exts,
		wire.Extension{Type: wire.ExtForwardTransit, Compulsory: true},
		wire.Extension{Type: wire.ExtReverseTransit, Compulsory: true})
	exts = append(exts, e.authExt()...)
	exts = append(exts, wire.Extension{Type: wire.ExtNATAddress, CIEs: nat})
	return exts
}

// replyExtensions builds a reply's extensions from the request's: the
// transit records and unknown extensions are kept, the Responder Address
// is filled with resp, the authentication is this node's, and the NAT
// Address extension gets the extra CIEs.
func (e *Engine) replyExtensions(req *wire.Packet, resp *wire.CIE, natExtra []wire.CIE) []wire.Extension {
	exts, _ := e.replyExtensionsInto(nil, nil, req, resp, natExtra)
	return exts
}

// replyExtensionsInto is replyExtensions appending to exts, with the
// extensions' CIEs appended to cies (each extension's own piece, capped):
// a caller that encodes the reply at once reuses both (returned grown).
func (e *Engine) replyExtensionsInto(exts []wire.Extension, cies []wire.CIE, req *wire.Packet, resp *wire.CIE, natExtra []wire.CIE) ([]wire.Extension, []wire.CIE) {
	if exts == nil {
		exts = make([]wire.Extension, 0, len(req.Extensions)+2)
	}
	own := func(parts ...[]wire.CIE) []wire.CIE {
		from := len(cies)
		for _, p := range parts {
			cies = append(cies, p...)
		}
		if len(cies) == from {
			return nil
		}
		return cies[from:len(cies):len(cies)]
	}
	hasAuth, hasNAT := false, false
	for _, x := range req.Extensions {
		switch x.Type {
		case wire.ExtEnd:
			continue
		case wire.ExtResponderAddress:
			x.CIEs = nil
			if resp != nil {
				x.CIEs = own([]wire.CIE{*resp})
			}
		case wire.ExtAuthentication:
			if hasAuth || len(e.cfg.AuthPassword) == 0 {
				continue
			}
			hasAuth = true
			x = wire.NewCiscoAuth(e.cfg.AuthPassword)
		case wire.ExtNATAddress:
			hasNAT = true
			x.CIEs = own(x.CIEs, natExtra)
		default:
			x.CIEs = own(x.CIEs)
		}
		exts = append(exts, x)
	}
	if !hasAuth {
		exts = append(exts, e.authExt()...)
	}
	if !hasNAT && len(natExtra) > 0 {
		exts = append(exts, wire.Extension{Type: wire.ExtNATAddress, CIEs: natExtra})
	}
	return exts, cies
}

// send sends p to an NBMA address once the peer is up. role and proto
// describe the peer to the PeerHandler.
//
// A packet for a peer that is up is encoded and sent at once; one for a
// peer being brought up is encoded now (p may alias a buffer that is
// reused) and sent when the peer is up.
func (e *Engine) send(p *wire.Packet, to netip.Addr, role string, proto netip.Addr) {
	if !to.IsValid() {
		e.stats.drop("no-route")
		return
	}
	if pe := e.peers[to]; e.deps.Peers == nil || (pe != nil && pe.state == peerUp) {
		e.whenUp(to, role, proto, func() { e.write(p, to) })
		return
	}
	b, err := p.MarshalBinary()
	if err != nil {
		e.log.Error("encoding NHRP packet", zap.Stringer("type", p.Type), zap.Error(err))
		return
	}
	var summary string
	if e.wantPackets.Load() {
		summary = p.Summary()
	}
	typ, code := p.Type, p.ErrorCode
	e.whenUp(to, role, proto, func() { e.writeBytes(b, to, typ, code, summary) })
}

// write encodes p and sends it now.
func (e *Engine) write(p *wire.Packet, to netip.Addr) {
	b, err := p.AppendBinary(e.txBuf[:0])
	if err != nil {
		e.log.Error("encoding NHRP packet", zap.Stringer("type", p.Type), zap.Error(err))
		return
	}
	e.txBuf = b
	var summary string
	if e.wantPackets.Load() {
		summary = p.Summary()
	}
	e.writeBytes(b, to, p.Type, p.ErrorCode, summary)
}

// writeBytes sends an encoded packet now, within the send limit. Packets
// to peers no entry or server uses (answers to strangers: refusals, error
// indications) get at most half of it, so a flood of forged packets from
// random sources cannot crowd out the replies to registered clients.
func (e *Engine) writeBytes(b []byte, to netip.Addr, typ wire.Type, code wire.ErrorCode, summary string) {
	known := false
	if p := e.peers[to]; p != nil && p.refs > 0 {
		known = true
	}
	if !e.limits.allowSend(e.now, known) {
		e.stats.suppress("max-send")
		return
	}
	if err := e.tun.WriteNHRP(b, to); err != nil {
		e.log.Debug("sending NHRP packet", zap.Stringer("to", to), zap.Error(err))
		return
	}
	e.stats.countSent(typ)
	if typ == wire.TypeErrorIndication {
		e.stats.countError(false, code)
	}
	if e.wantPackets.Load() && summary != "" {
		e.emit(Event{Kind: EventPacket, NBMA: to, Packet: &PacketEvent{Dir: "out", Peer: to, Summary: summary}})
	}
}
