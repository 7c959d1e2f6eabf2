package wire

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
)

// basePacket is a Registration Request with a CIE and extensions:
// fixed header 0-19, lengths/flags/id 20-27, src NBMA 28-31, src proto
// 32-35, dst proto 36-39, CIE 40-51, extensions from 52.
func basePacket(t *testing.T, exts ...Extension) []byte {
	t.Helper()
	p := &Packet{Type: TypeRegistrationRequest, HopCount: 1, Flags: RegFlagU, RequestID: 7,
		SrcNBMA: netip.MustParseAddr("192.0.2.11"), SrcProto: netip.MustParseAddr("10.0.0.11"),
		DstProto: netip.MustParseAddr("10.0.0.1"),
		CIEs:     []CIE{{PrefixLen: 255, MTU: 1472, HoldingTime: 7200}}, Extensions: exts}
	b, err := p.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fix recomputes the checksum after a mutation.
func fix(b []byte) []byte {
	b[12], b[13] = 0, 0
	binary.BigEndian.PutUint16(b[12:], Checksum(b[:binary.BigEndian.Uint16(b[10:])]))
	return b
}

func put16(b []byte, off int, v uint16) []byte { binary.BigEndian.PutUint16(b[off:], v); return b }

// setSize changes the size field and truncates or extends the buffer.
func setSize(b []byte, n int) []byte {
	for len(b) < n {
		b = append(b, 0)
	}
	b = b[:n]
	return put16(b, 10, uint16(n))
}

func TestDecodeErrors(t *testing.T) {
	auth := NewCiscoAuth([]byte("pw"))
	tests := []struct {
		name   string
		in     func(t *testing.T) []byte
		want   error
		code   ErrorCode
		offset int
	}{
		{"empty", func(t *testing.T) []byte { return nil }, ErrTruncated, ErrorProtocol, 0},
		{"short buffer", func(t *testing.T) []byte { return basePacket(t)[:19] }, ErrTruncated, ErrorProtocol, 0},
		{"size below header", func(t *testing.T) []byte { return put16(basePacket(t), 10, 19) }, ErrBadSize, ErrorProtocol, 10},
		{"size beyond buffer", func(t *testing.T) []byte { b := basePacket(t); return b[:len(b)-1] }, ErrTruncated, ErrorProtocol, 10},
		{"bad checksum", func(t *testing.T) []byte { b := basePacket(t); b[30] ^= 0x40; return b }, ErrBadChecksum, ErrorProtocol, 12},
		{"version 2", func(t *testing.T) []byte { b := basePacket(t); b[16] = 2; return fix(b) }, ErrBadVersion, ErrorProtocol, 16},
		{"type 0", func(t *testing.T) []byte { b := basePacket(t); b[17] = 0; return fix(b) }, ErrUnknownType, ErrorProtocol, 17},
		{"type 9", func(t *testing.T) []byte { b := basePacket(t); b[17] = 9; return fix(b) }, ErrUnknownType, ErrorProtocol, 17},
		{"address family 3", func(t *testing.T) []byte { return fix(put16(basePacket(t), 0, 3)) }, ErrAddressFamily, ErrorProtocol, 0},
		{"protocol type", func(t *testing.T) []byte { return fix(put16(basePacket(t), 2, 0x0806)) }, ErrProtocolType, ErrorProtocol, 2},
		{"nbma length 5 for IPv4", func(t *testing.T) []byte { b := basePacket(t); b[18] = 5; return fix(b) }, ErrAddressLength, ErrorProtocol, 18},
		{"nbma length 16 for IPv4", func(t *testing.T) []byte { b := basePacket(t); b[18] = 16; return fix(b) }, ErrAddressLength, ErrorProtocol, 18},
		{"src proto length 3", func(t *testing.T) []byte { b := basePacket(t); b[20] = 3; return fix(b) }, ErrAddressLength, ErrorProtocol, 20},
		{"dst proto length 16 for IPv4", func(t *testing.T) []byte { b := basePacket(t); b[21] = 16; return fix(b) }, ErrAddressLength, ErrorProtocol, 21},
		{"subaddress overruns", func(t *testing.T) []byte { b := basePacket(t); b[19] = 60; return fix(b) }, ErrMandatoryPart, ErrorProtocol, 32},
		{"addresses overrun the size", func(t *testing.T) []byte { return fix(setSize(basePacket(t), 34)) }, ErrMandatoryPart, ErrorProtocol, 32},
		{"mandatory part shorter than its header", func(t *testing.T) []byte { return fix(setSize(basePacket(t), 24)) }, ErrMandatoryPart, ErrorProtocol, 20},
		{"CIE truncated", func(t *testing.T) []byte { return fix(setSize(basePacket(t), 47)) }, ErrCIE, ErrorProtocol, 40},
		{"CIE address length bad", func(t *testing.T) []byte { b := basePacket(t); b[48] = 3; return fix(b) }, ErrAddressLength, ErrorProtocol, 48},
		{"CIE address overruns", func(t *testing.T) []byte { b := basePacket(t); b[48] = 4; return fix(b) }, ErrMandatoryPart, ErrorProtocol, 52},
		{"extension offset beyond size", func(t *testing.T) []byte { b := basePacket(t, auth); return fix(put16(b, 14, uint16(len(b)+1))) }, ErrExtOffset, ErrorProtocol, 14},
		{"extension offset inside the header", func(t *testing.T) []byte { return fix(put16(basePacket(t, auth), 14, 20)) }, ErrExtOffset, ErrorProtocol, 14},
		{"extension offset cuts an address", func(t *testing.T) []byte { return fix(put16(basePacket(t, auth), 14, 30)) }, ErrMandatoryPart, ErrorProtocol, 28},
		{"extension overruns", func(t *testing.T) []byte { return fix(put16(basePacket(t, auth), 54, 200)) }, ErrExtOverrun, ErrorInvalidExtension, 52},
		{"extension header truncated", func(t *testing.T) []byte {
			b := basePacket(t, auth)
			return fix(setSize(b, len(b)-2)) // cuts the End extension in half
		}, ErrExtOverrun, ErrorInvalidExtension, 62},
		{"missing End", func(t *testing.T) []byte { b := basePacket(t, auth); return fix(setSize(b, len(b)-4)) }, ErrExtMissingEnd, ErrorInvalidExtension, 62},
		{"data after End", func(t *testing.T) []byte { b := basePacket(t, auth); return fix(setSize(b, len(b)+4)) }, ErrExtTrailing, ErrorInvalidExtension, 66},
		{"End with a payload", func(t *testing.T) []byte {
			b := basePacket(t, auth)
			b = setSize(b, len(b)+2)
			return fix(put16(b, 64, 2))
		}, ErrExtPayload, ErrorInvalidExtension, 62},
		{"authentication shorter than its type", func(t *testing.T) []byte {
			b := basePacket(t, Extension{Type: 0x3800, Data: []byte{1, 2, 3}})
			return fix(put16(b, 52, 0x8000|uint16(ExtAuthentication)))
		}, ErrExtPayload, ErrorInvalidExtension, 52},
		{"vendor-private shorter than its OUI", func(t *testing.T) []byte {
			b := basePacket(t, Extension{Type: 0x3800, Data: []byte{1, 2}})
			return fix(put16(b, 52, uint16(ExtVendorPrivate)))
		}, ErrExtPayload, ErrorInvalidExtension, 52},
		{"responder CIE malformed", func(t *testing.T) []byte {
			b := basePacket(t, Extension{Type: 0x3800, Data: make([]byte, 13)})
			return fix(put16(b, 52, 0x8000|uint16(ExtResponderAddress)))
		}, ErrCIE, ErrorInvalidExtension, 68},
		{"NAT CIE address length bad", func(t *testing.T) []byte {
			d := make([]byte, 12)
			d[8] = 6
			b := basePacket(t, Extension{Type: 0x3800, Data: d})
			return fix(put16(b, 52, uint16(ExtNATAddress)))
		}, ErrAddressLength, ErrorInvalidExtension, 64},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.in(t)
			p, err := Decode(in)
			if err == nil {
				t.Fatalf("decoded %+v, want error %v", p, tc.want)
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %v is not *Error", err)
			}
			if !errors.Is(err, tc.want) || e.Code != tc.code || e.Offset != tc.offset {
				t.Fatalf("got %v (code %d, offset %d), want %v (code %d, offset %d)",
					err, e.Code, e.Offset, tc.want, tc.code, tc.offset)
			}
			if e.Error() == "" {
				t.Fatal("empty message")
			}
		})
	}
}

func TestUnknownCompulsory(t *testing.T) {
	b := basePacket(t, Extension{Type: 0x1234, Data: []byte("ok")}, Extension{Type: 0x2345, Compulsory: true, Data: []byte("no")})
	p, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	e, ok := p.UnknownCompulsory()
	if !ok || e.Type != 0x2345 || string(e.Data) != "no" {
		t.Fatalf("UnknownCompulsory = %+v, %v", e, ok)
	}
	b = basePacket(t, Extension{Type: 0x1234, Data: []byte("ok")}, NewCiscoAuth([]byte("x")))
	if p, _ = Decode(b); p == nil {
		t.Fatal("decode failed")
	}
	if e, ok := p.UnknownCompulsory(); ok {
		t.Fatalf("known or optional extensions reported: %+v", e)
	}
	if pw, ok := p.Auth(); !ok || string(pw) != "x" {
		t.Fatalf("Auth() = %q, %v", pw, ok)
	}
}

func TestEncodeErrors(t *testing.T) {
	v4 := netip.MustParseAddr("192.0.2.1")
	v6 := netip.MustParseAddr("2001:db8::1")
	tests := []struct {
		name string
		p    Packet
		want error
	}{
		{"unknown type", Packet{Type: 9}, ErrUnknownType},
		{"IPv6 NBMA in an IPv4 packet", Packet{Type: TypeRegistrationRequest, AddrFamily: AFIPv4, SrcNBMA: v6}, ErrAddressMismatch},
		{"IPv4 protocol address in an IPv6 packet", Packet{Type: TypeRegistrationRequest, ProtoType: ProtoIPv6, SrcProto: v4}, ErrAddressMismatch},
		{"mixed protocol addresses", Packet{Type: TypeRegistrationRequest, SrcProto: v4, DstProto: v6}, ErrAddressMismatch},
		{"CIE NBMA of the wrong family", Packet{Type: TypeRegistrationRequest, SrcNBMA: v4, CIEs: []CIE{{NBMA: v6}}}, ErrAddressMismatch},
		{"unsupported family", Packet{Type: TypeRegistrationRequest, AddrFamily: 7}, ErrAddressFamily},
		{"unsupported protocol", Packet{Type: TypeRegistrationRequest, ProtoType: 0x0806}, ErrProtocolType},
		{"payload in a registration", Packet{Type: TypeRegistrationRequest, Payload: []byte{1}}, ErrFieldRange},
		{"CIEs in an error indication", Packet{Type: TypeErrorIndication, CIEs: []CIE{{}}}, ErrFieldRange},
		{"End in the middle", Packet{Type: TypeRegistrationRequest, Extensions: []Extension{{Type: ExtEnd}, NewCiscoAuth(nil)}}, ErrExtTrailing},
		{"vendor ID wider than an OUI", Packet{Type: TypeRegistrationRequest, Extensions: []Extension{{Type: ExtVendorPrivate, VendorID: 1 << 24}}}, ErrFieldRange},
		{"extension type too large", Packet{Type: TypeRegistrationRequest, Extensions: []Extension{{Type: 0x4000}}}, ErrFieldRange},
		{"subaddress too long", Packet{Type: TypeRegistrationRequest, SrcNBMASub: make([]byte, 64)}, ErrFieldRange},
		{"address type bits", Packet{Type: TypeRegistrationRequest, SrcNBMAType: 0x20, SrcNBMA: v4}, ErrFieldRange},
		{"packet too big", Packet{Type: TypeRegistrationRequest, Extensions: []Extension{{Type: 0x1000, Data: make([]byte, 65535)}}}, ErrTooBig},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			prefix := []byte{1, 2, 3}
			b, err := tc.p.AppendBinary(prefix)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if string(b) != string(prefix) {
				t.Fatalf("buffer changed on error: %x", b)
			}
		})
	}
}
