package failover

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// reply builds an IPv4 packet carrying the echo reply to request.
func reply(from netip.Addr, request []byte) []byte {
	icmp := append([]byte(nil), request...)
	icmp[0] = icmpEchoReply
	icmp[2], icmp[3] = 0, 0
	binary.BigEndian.PutUint16(icmp[2:], checksum(icmp))
	ip := make([]byte, 20, 20+len(icmp))
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(icmp)))
	ip[8], ip[9] = 64, 1
	a := from.As4()
	copy(ip[12:16], a[:])
	copy(ip[16:20], []byte{198, 51, 100, 1})
	binary.BigEndian.PutUint16(ip[10:], checksum(ip))
	return append(ip, icmp...)
}

func TestEchoRoundTrip(t *testing.T) {
	req := appendEchoRequest(nil, 0xbeef, 42)
	if checksum(req) != 0 {
		t.Fatal("request checksum does not verify")
	}
	host := netip.MustParseAddr("192.0.2.253")
	from, id, seq, ok := parseEchoReply(reply(host, req))
	if !ok || from != host || id != 0xbeef || seq != 42 {
		t.Fatalf("parsed %v %#x %d %v", from, id, seq, ok)
	}
	// The request itself is not a reply; a corrupted reply is refused.
	bad := reply(host, req)
	bad[len(bad)-1] ^= 1
	for name, b := range map[string][]byte{"request": append(make([]byte, 20), req...), "bad checksum": bad, "short": bad[:27]} {
		if _, _, _, ok := parseEchoReply(b); ok {
			t.Errorf("%s taken for an echo reply", name)
		}
	}
}

func FuzzParseEchoReply(f *testing.F) {
	f.Add(reply(netip.MustParseAddr("192.0.2.253"), appendEchoRequest(nil, 1, 2)))
	f.Add([]byte{0x45, 0, 0, 20})
	f.Fuzz(func(t *testing.T, b []byte) {
		from, id, seq, ok := parseEchoReply(b)
		if !ok {
			return
		}
		// What parses is an echo reply: rebuilt from its fields it parses
		// the same.
		again := reply(from, appendEchoRequest(nil, id, seq))
		f2, id2, seq2, ok2 := parseEchoReply(again)
		if !ok2 || f2 != from || id2 != id || seq2 != seq {
			t.Fatalf("rebuilt reply parses as %v %d %d %v, want %v %d %d", f2, id2, seq2, ok2, from, id, seq)
		}
	})
}
