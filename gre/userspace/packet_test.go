package userspace

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/opendmvpn/dmvpn/gre/internal/inet"
)

func ipv4Packet(src, dst string, proto byte, df bool, payload int) []byte {
	p := make([]byte, 20+payload)
	p[0] = 0x45
	p[1] = 0x28
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	if df {
		p[6] = 0x40
	}
	p[8] = 64
	p[9] = proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	binary.BigEndian.PutUint16(p[10:], inet.Checksum(p[:20]))
	return p
}

func TestParseInner(t *testing.T) {
	v4 := ipv4Packet("10.1.0.2", "10.2.0.2", protoICMP, true, 8)
	got, ok := parseInner(v4)
	want := inner{src: netip.MustParseAddr("10.1.0.2"), dst: netip.MustParseAddr("10.2.0.2"), df: true, tos: 0x28}
	if !ok || got != want {
		t.Fatalf("parseInner(v4) = %+v %v", got, ok)
	}
	v6 := make([]byte, 48)
	v6[0] = 0x6b // version 6, traffic class 0xb?
	v6[1] = 0x80
	binary.BigEndian.PutUint16(v6[4:], 8)
	copy(v6[8:], netip.MustParseAddr("fd00::1").AsSlice())
	copy(v6[24:], netip.MustParseAddr("fd00::2").AsSlice())
	got, ok = parseInner(v6)
	if !ok || !got.v6 || got.dst != netip.MustParseAddr("fd00::2") || got.tos != 0xb8 || !got.df {
		t.Fatalf("parseInner(v6) = %+v %v", got, ok)
	}
	for _, bad := range [][]byte{nil, {0x45}, {0x55, 0, 0, 0}, {0x44, 0, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, v6[:39]} {
		if _, ok := parseInner(bad); ok {
			t.Errorf("parseInner(%x) accepted", bad)
		}
	}
	if n, ok := innerLen(append(v4, 0, 0, 0)); !ok || n != len(v4) {
		t.Errorf("innerLen with padding = %d %v", n, ok)
	}
	if _, ok := innerLen(v4[:len(v4)-1]); ok {
		t.Error("innerLen accepted a truncated packet")
	}
	if n, ok := innerLen(v6); !ok || n != 48 {
		t.Errorf("innerLen(v6) = %d %v", n, ok)
	}
}

func TestIsMultiDest(t *testing.T) {
	tun := netip.MustParsePrefix("10.0.0.1/24")
	tests := map[string]bool{
		"224.0.0.5": true, "255.255.255.255": true, "10.0.0.255": true,
		"10.0.0.2": false, "10.0.1.255": false, "ff02::5": true, "fd00::1": false,
	}
	for a, want := range tests {
		if got := isMultiDest(netip.MustParseAddr(a), tun); got != want {
			t.Errorf("isMultiDest(%s) = %v", a, got)
		}
	}
	if isMultiDest(netip.MustParseAddr("10.0.0.1"), netip.MustParsePrefix("10.0.0.0/31")) {
		t.Error("a /31 has no broadcast address")
	}
}

func TestFragNeeded4(t *testing.T) {
	orig := ipv4Packet("10.1.0.2", "10.2.0.2", protoTCP, true, 1400)
	b := fragNeeded4(orig, 1372)
	if len(b) != 576 {
		t.Fatalf("length %d, want 576", len(b))
	}
	if b[9] != protoICMP || netip.AddrFrom4([4]byte(b[16:20])) != netip.MustParseAddr("10.1.0.2") || netip.AddrFrom4([4]byte(b[12:16])) != netip.IPv4Unspecified() {
		t.Fatalf("header %x", b[:20])
	}
	icmp := b[20:]
	if icmp[0] != 3 || icmp[1] != 4 || binary.BigEndian.Uint16(icmp[6:]) != 1372 {
		t.Fatalf("icmp %x", icmp[:8])
	}
	if inet.Checksum(icmp) != 0 {
		t.Fatal("bad ICMP checksum")
	}
	if diff := cmp.Diff(orig[:548], icmp[8:]); diff != "" {
		t.Fatalf("quoted packet (-want +got):\n%s", diff)
	}
	short := ipv4Packet("10.1.0.2", "10.2.0.2", protoICMP, true, 8)
	if got := fragNeeded4(short, 1372); len(got) != 20+8+28 {
		t.Fatalf("short original quoted whole: %d", len(got))
	}
	body, dst := packetTooBig6(make([]byte, 2000), 1280)
	if len(body) != 1280-40 || body[0] != 2 || binary.BigEndian.Uint32(body[4:]) != 1280 || !dst.Is6() {
		t.Fatalf("packet too big: len %d %x", len(body), body[:8])
	}
}

func TestGSOHeader(t *testing.T) {
	p := ipv4Packet("10.1.0.2", "10.2.0.2", protoTCP, true, 20+4000)
	p[20+12] = 5 << 4                    // TCP data offset
	binary.BigEndian.PutUint16(p[2:], 0) // GRO may leave a stale length
	h, ok := gsoHeader(p, 1472)
	if !ok {
		t.Fatal("refused a TCP super-packet")
	}
	want := [vnetHdrLen]byte{1, 1}
	binary.NativeEndian.PutUint16(want[2:], 40)
	binary.NativeEndian.PutUint16(want[4:], 1432)
	binary.NativeEndian.PutUint16(want[6:], 20)
	binary.NativeEndian.PutUint16(want[8:], 16)
	if h != want {
		t.Fatalf("virtio header %x, want %x", h, want)
	}
	if binary.BigEndian.Uint16(p[2:]) != uint16(len(p)) || inet.Checksum(p[:20]) != 0 {
		t.Fatal("IPv4 length/checksum not fixed")
	}
	pseudo := inet.Fold(inet.PseudoSum(p[12:16], p[16:20], protoTCP, len(p)-20))
	if binary.BigEndian.Uint16(p[36:]) != pseudo {
		t.Fatal("TCP checksum field is not the pseudo-header sum")
	}
	udp := ipv4Packet("10.1.0.2", "10.2.0.2", 17, true, 3000)
	if _, ok := gsoHeader(udp, 1472); ok {
		t.Fatal("accepted a UDP super-packet")
	}
	frag := ipv4Packet("10.1.0.2", "10.2.0.2", protoTCP, false, 3000)
	frag[7] = 1
	if _, ok := gsoHeader(frag, 1472); ok {
		t.Fatal("accepted a fragment")
	}
}

func TestPutOuter4(t *testing.T) {
	b := make([]byte, 20)
	putOuter4(b, [4]byte{192, 0, 2, 1}, [4]byte{198, 51, 100, 1}, 0xb8, 64, true, 7)
	want := []byte{0x45, 0xb8, 0, 0, 0, 7, 0x40, 0, 64, 47, 0, 0, 192, 0, 2, 1, 198, 51, 100, 1}
	if diff := cmp.Diff(want, b); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
	putOuter4(b, [4]byte{}, [4]byte{198, 51, 100, 1}, 0, 64, false, 8)
	if b[6] != 0 {
		t.Fatal("DF not cleared")
	}
}
