package failover

import (
	"encoding/binary"
	"net/netip"
)

// ICMP message types of echo.
const (
	icmpEchoReply   = 0
	icmpEchoRequest = 8
)

// echoPayload marks the probes' echo requests.
var echoPayload = [8]byte{'d', 'm', 'v', 'p', 'n', 'u', 'p', 'l'}

// appendEchoRequest appends an ICMP echo request (header and payload,
// checksum set) to b.
func appendEchoRequest(b []byte, id, seq uint16) []byte {
	start := len(b)
	b = append(b, icmpEchoRequest, 0, 0, 0)
	b = binary.BigEndian.AppendUint16(b, id)
	b = binary.BigEndian.AppendUint16(b, seq)
	b = append(b, echoPayload[:]...)
	binary.BigEndian.PutUint16(b[start+2:], checksum(b[start:]))
	return b
}

// checksum is the Internet checksum (RFC 1071) of b.
func checksum(b []byte) uint16 {
	var s uint32
	for len(b) >= 2 {
		s += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

// parseEchoReply reads an IPv4 packet as a raw ICMP socket receives it
// (IP header included) and returns the sender, identifier and sequence of
// an ICMP echo reply. Anything else — another type, a bad length or
// checksum, a fragment — is not one (ok false).
func parseEchoReply(b []byte) (from netip.Addr, id, seq uint16, ok bool) {
	if len(b) < 20 || b[0]>>4 != 4 {
		return
	}
	ihl := int(b[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(b[2:4]))
	if ihl < 20 || total < ihl+8 || total > len(b) || b[9] != 1 {
		return
	}
	if frag := binary.BigEndian.Uint16(b[6:8]); frag&0x3fff != 0 {
		return // a fragment: echo replies of probes are never fragmented
	}
	icmp := b[ihl:total]
	if icmp[0] != icmpEchoReply || icmp[1] != 0 || checksum(icmp) != 0 {
		return
	}
	return netip.AddrFrom4([4]byte(b[12:16])), binary.BigEndian.Uint16(icmp[4:6]), binary.BigEndian.Uint16(icmp[6:8]), true
}
