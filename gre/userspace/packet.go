package userspace

import (
	"encoding/binary"
	"net/netip"

	"github.com/opendmvpn/dmvpn/gre/internal/inet"
)

const (
	protoICMP   = 1
	protoTCP    = 6
	protoICMPv6 = 58
	ipv4HdrLen  = 20
	ipv6HdrLen  = 40
	vnetHdrLen  = 10 // struct virtio_net_hdr
	// icmpQuoteMax bounds the quoted packet in an ICMP error so the error
	// fits in 576 bytes (RFC 1812 4.3.2.3).
	icmpQuoteMax = 576 - ipv4HdrLen - 8
	// icmp6QuoteMax fits an ICMPv6 error in the IPv6 minimum MTU.
	icmp6QuoteMax = 1280 - ipv6HdrLen - 8
)

// inner describes an IP packet read from the tunnel interface.
type inner struct {
	dst, src netip.Addr
	df       bool // IPv4 DF bit; always true for IPv6 (routers never fragment)
	tos      uint8
	v6       bool
}

// parseInner reads the addresses of an IPv4 or IPv6 packet. It checks only
// what the forwarding decision needs.
func parseInner(p []byte) (inner, bool) {
	if len(p) < 1 {
		return inner{}, false
	}
	switch p[0] >> 4 {
	case 4:
		if len(p) < ipv4HdrLen || int(p[0]&0x0f)*4 < ipv4HdrLen {
			return inner{}, false
		}
		return inner{
			src: netip.AddrFrom4([4]byte(p[12:16])),
			dst: netip.AddrFrom4([4]byte(p[16:20])),
			df:  p[6]&0x40 != 0,
			tos: p[1],
		}, true
	case 6:
		if len(p) < ipv6HdrLen {
			return inner{}, false
		}
		return inner{
			src: netip.AddrFrom16([16]byte(p[8:24])),
			dst: netip.AddrFrom16([16]byte(p[24:40])),
			df:  true,
			tos: byte(binary.BigEndian.Uint16(p[0:2]) >> 4),
			v6:  true,
		}, true
	}
	return inner{}, false
}

// innerLen validates a decapsulated packet and returns its length from its
// own header (the datagram may carry padding) or false.
func innerLen(p []byte) (int, bool) {
	if len(p) < 1 {
		return 0, false
	}
	switch p[0] >> 4 {
	case 4:
		if len(p) < ipv4HdrLen {
			return 0, false
		}
		ihl := int(p[0]&0x0f) * 4
		tl := int(binary.BigEndian.Uint16(p[2:4]))
		if ihl < ipv4HdrLen || tl < ihl || tl > len(p) {
			return 0, false
		}
		return tl, true
	case 6:
		if len(p) < ipv6HdrLen {
			return 0, false
		}
		tl := ipv6HdrLen + int(binary.BigEndian.Uint16(p[4:6]))
		if tl > len(p) {
			return 0, false
		}
		return tl, true
	}
	return 0, false
}

// isMultiDest reports whether a tunnel destination is replicated to the
// multicast NBMA list: multicast, limited broadcast or the broadcast
// address of the tunnel prefix.
func isMultiDest(dst netip.Addr, tunnel netip.Prefix) bool {
	if dst.IsMulticast() {
		return true
	}
	if !dst.Is4() {
		return false
	}
	if dst == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return true
	}
	if tunnel.IsValid() && tunnel.Addr().Is4() && tunnel.Bits() < 31 && tunnel.Masked().Contains(dst) {
		a := dst.As4()
		host := binary.BigEndian.Uint32(a[:]) & (1<<(32-tunnel.Bits()) - 1)
		return host == 1<<(32-tunnel.Bits())-1
	}
	return false
}

// putOuter4 writes an outer IPv4 header for IP_HDRINCL: the kernel fills
// in the total length and checksum, and the source when it is zero.
func putOuter4(b []byte, src, dst [4]byte, tos, ttl uint8, df bool, id uint16) {
	b[0] = 0x45
	b[1] = tos
	b[2], b[3] = 0, 0
	binary.BigEndian.PutUint16(b[4:], id)
	if df {
		b[6], b[7] = 0x40, 0
	} else {
		b[6], b[7] = 0, 0
	}
	b[8] = ttl
	b[9] = 47
	b[10], b[11] = 0, 0
	copy(b[12:16], src[:])
	copy(b[16:20], dst[:])
}

// fragNeeded4 builds a complete IPv4 ICMP "fragmentation needed" error
// (type 3 code 4) about the packet orig for IP_HDRINCL with a zero source,
// so the kernel picks the source as for any locally generated packet.
func fragNeeded4(orig []byte, mtu int) []byte {
	q := orig
	if len(q) > icmpQuoteMax {
		q = q[:icmpQuoteMax]
	}
	b := make([]byte, ipv4HdrLen+8+len(q))
	b[0] = 0x45
	b[1] = 0xc0 // internetwork control, as the kernel's ICMP errors
	b[8] = 64
	b[9] = protoICMP
	copy(b[16:20], orig[12:16]) // to the original sender
	icmp := b[ipv4HdrLen:]
	icmp[0], icmp[1] = 3, 4
	binary.BigEndian.PutUint16(icmp[6:], uint16(mtu))
	copy(icmp[8:], q)
	binary.BigEndian.PutUint16(icmp[2:], inet.Checksum(icmp))
	return b
}

// packetTooBig6 builds the ICMPv6 Packet Too Big message body (type 2)
// about orig; the kernel adds the IPv6 header and checksum on a raw
// ICMPv6 socket. It returns the body and the destination.
func packetTooBig6(orig []byte, mtu int) ([]byte, netip.Addr) {
	q := orig
	if len(q) > icmp6QuoteMax {
		q = q[:icmp6QuoteMax]
	}
	b := make([]byte, 8+len(q))
	b[0] = 2
	binary.BigEndian.PutUint32(b[4:], uint32(mtu))
	copy(b[8:], q)
	return b, netip.AddrFrom16([16]byte(orig[8:24]))
}

// gsoHeader prepares a TCP packet larger than the tunnel MTU (the underlay
// coalesced it, GRO) to be written to the TUN whole as a GSO packet: it
// returns the virtio_net_hdr asking the kernel to segment it at mss-sized
// payloads and fixes the IP lengths and checksums in place
// (CHECKSUM_PARTIAL: the TCP checksum field holds the pseudo-header sum).
// Non-TCP packets are refused.
func gsoHeader(p []byte, mtu int) ([vnetHdrLen]byte, bool) {
	var h [vnetHdrLen]byte
	var ipl, thl int
	var gsoType byte
	switch p[0] >> 4 {
	case 4:
		ipl = int(p[0]&0x0f) * 4
		if len(p) < ipl+20 || p[9] != protoTCP || len(p) > 0xffff {
			return h, false
		}
		if binary.BigEndian.Uint16(p[6:8])&0x3fff != 0 { // a fragment
			return h, false
		}
		binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
		p[10], p[11] = 0, 0
		binary.BigEndian.PutUint16(p[10:], inet.Checksum(p[:ipl]))
		gsoType = 1 // VIRTIO_NET_HDR_GSO_TCPV4
		thl = int(p[ipl+12]>>4) * 4
		if thl < 20 || len(p) < ipl+thl {
			return h, false
		}
		binary.BigEndian.PutUint16(p[ipl+16:], inet.Fold(inet.PseudoSum(p[12:16], p[16:20], protoTCP, len(p)-ipl)))
	case 6:
		ipl = ipv6HdrLen
		if len(p) < ipl+20 || p[6] != protoTCP || len(p)-ipl > 0xffff {
			return h, false
		}
		binary.BigEndian.PutUint16(p[4:], uint16(len(p)-ipl))
		gsoType = 4 // VIRTIO_NET_HDR_GSO_TCPV6
		thl = int(p[ipl+12]>>4) * 4
		if thl < 20 || len(p) < ipl+thl {
			return h, false
		}
		binary.BigEndian.PutUint16(p[ipl+16:], inet.Fold(inet.PseudoSum(p[8:24], p[24:40], protoTCP, len(p)-ipl)))
	default:
		return h, false
	}
	mss := mtu - ipl - thl
	if mss <= 0 {
		return h, false
	}
	h[0] = 1 // VIRTIO_NET_HDR_F_NEEDS_CSUM
	h[1] = gsoType
	binary.NativeEndian.PutUint16(h[2:], uint16(ipl+thl)) // hdr_len
	binary.NativeEndian.PutUint16(h[4:], uint16(mss))     // gso_size
	binary.NativeEndian.PutUint16(h[6:], uint16(ipl))     // csum_start
	binary.NativeEndian.PutUint16(h[8:], 16)              // csum_offset (TCP)
	return h, true
}
