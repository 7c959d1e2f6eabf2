package nhrp

import (
	"net/netip"

	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// maxRedirectQuote is how much of a relayed packet a Traffic Indication
// quotes: the IP header and the start of its payload.
const maxRedirectQuote = 64

// Relayed reports a packet this hub relayed from the tunnel back into the
// tunnel (seen by the redirect rule): the start of the inner IP packet.
// It does not block; when the engine is busy the report is dropped.
func (e *Engine) Relayed(pkt []byte) {
	if len(pkt) > maxRedirectQuote*2 {
		pkt = pkt[:maxRedirectQuote*2]
	}
	select {
	case e.relayCh <- append([]byte(nil), pkt...):
	default:
		e.stats.suppress("redirect")
	}
}

// ipAddrs returns the source and destination of an IPv4 or IPv6 packet.
func ipAddrs(b []byte) (src, dst netip.Addr, ok bool) {
	if len(b) < 1 {
		return
	}
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return
		}
		return netip.AddrFrom4([4]byte(b[12:16])), netip.AddrFrom4([4]byte(b[16:20])), true
	case 6:
		if len(b) < 40 {
			return
		}
		return netip.AddrFrom16([16]byte(b[8:24])), netip.AddrFrom16([16]byte(b[24:40])), true
	}
	return
}

// handleRelayed sends a Traffic Indication to the client that sent a
// relayed packet, so it resolves the destination and goes direct (DMVPN
// phase 3). Rate-limited per source and destination.
func (e *Engine) handleRelayed(pkt []byte) {
	if !e.cfg.Redirect || e.stopping {
		return
	}
	src, dst, ok := ipAddrs(pkt)
	if !ok || src.BitLen() != e.own.BitLen() {
		return
	}
	// The client that sent it: the tunnel next hop of the route back to
	// the source, or a binding covering the source.
	var client *entry
	if ri, ok := e.route(src); ok && ri.NextHop.IsValid() {
		client = e.cache.get(hostPrefix(ri.NextHop))
	}
	if client == nil || !client.nbma.IsValid() {
		client = e.cache.lookup(src, func(en *entry) bool {
			return en.nbma.IsValid() && (en.typ == TypeDynamic || en.typ == TypeCached || en.typ == TypeStatic)
		})
	}
	if client == nil || !client.nbma.IsValid() {
		return
	}
	if !e.limits.allowRedirect(e.now, src, dst) {
		e.stats.suppress("redirect")
		return
	}
	q := pkt
	if len(q) > maxRedirectQuote {
		q = q[:maxRedirectQuote]
	}
	ti := e.newPacket(wire.TypeTrafficIndication, client.proto.Addr(), client.nbma)
	ti.TrafficCode = wire.TrafficRedirect
	ti.Payload = append([]byte(nil), q...)
	ti.Extensions = e.requestExtensions(false, nil)
	e.send(ti, client.nbma, roleOf(client.typ), client.proto.Addr())
}

// handleTrafficIndication acts on a redirect: resolve the destination of
// the quoted packet so the next packets go direct.
func (e *Engine) handleTrafficIndication(p *wire.Packet, raw []byte, from netip.Addr) {
	if !e.cfg.Shortcut {
		e.stats.drop("not-for-us")
		return
	}
	if n := e.nhsByNBMA(from); n == nil || n.removed {
		_, dst, _ := ipAddrs(p.Payload)
		e.refuse(RefusedTrafficIndication, from, prefixOf(dst), "traffic indication from "+from.String()+", not a server of this node")
		return
	}
	if e.refuseUnknown(p, raw, from) {
		return
	}
	if p.TrafficCode != wire.TrafficRedirect {
		e.stats.drop("unsupported")
		return
	}
	_, dst, ok := ipAddrs(p.Payload)
	if !ok || dst.BitLen() != e.own.BitLen() || e.isOwn(dst) || dst.IsMulticast() || dst.IsUnspecified() {
		e.stats.drop("malformed")
		return
	}
	if ri, ok := e.route(dst); ok && ri.Local {
		return // our own network: nothing to resolve
	}
	e.resolve(dst, "redirect", nil)
}
