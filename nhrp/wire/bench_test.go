package wire

import "testing"

// benchPDU is a Cisco Registration Request with the usual extensions:
// Responder Address, Forward and Reverse Transit NHS Records,
// Authentication and the NAT Address extension with a CIE.
func benchPDU(b *testing.B) []byte {
	return readPDUs(b, "tcpdump__NHRP_registration")[0].raw
}

func BenchmarkDecode(b *testing.B) {
	raw := benchPDU(b)
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if _, err := Decode(raw); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeReuse(b *testing.B) {
	raw := benchPDU(b)
	var p Packet
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if err := p.UnmarshalBinary(raw); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncode(b *testing.B) {
	p, err := Decode(benchPDU(b))
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		if buf, err = p.AppendBinary(buf[:0]); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(len(buf)))
}
