package wire

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// fuzzSeeds adds the real captures (including the fuzzed one) and every
// sample packet to a fuzz target's seed corpus.
func fuzzSeeds(f *testing.F) {
	for _, name := range append(captureNames, "tcpdump__pb_nhrp_1") {
		for _, pdu := range readPDUs(f, name) {
			f.Add(pdu.raw)
		}
	}
	for _, p := range samplePackets() {
		b, err := p.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

// withChecksum returns a copy of b whose checksum field is correct for the
// size it claims, so mutations reach past the checksum check.
func withChecksum(b []byte) []byte {
	if len(b) < FixedHeaderLen {
		return b
	}
	n := int(binary.BigEndian.Uint16(b[10:]))
	if n < FixedHeaderLen || n > len(b) {
		return b
	}
	c := append([]byte(nil), b...)
	c[12], c[13] = 0, 0
	binary.BigEndian.PutUint16(c[12:], Checksum(c[:n]))
	return c
}

// FuzzDecode: decoding never panics, and a packet that decodes re-encodes
// to the same bytes (but for the equivalent checksum 0xffff, which an
// encoder writes as 0x0000). Each input is tried as is and with its
// checksum fixed.
func FuzzDecode(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		checkDecode(t, b)
		checkDecode(t, withChecksum(b))
	})
}

// checkDecode decodes b and, when it decodes, requires the re-encoding to
// reproduce it.
func checkDecode(t *testing.T, b []byte) {
	t.Helper()
	p, err := Decode(b)
	if err != nil {
		if _, ok := err.(*Error); !ok {
			t.Fatalf("error of type %T: %v", err, err)
		}
		return
	}
	out, err := p.AppendBinary(nil)
	if err != nil {
		t.Fatalf("decoded packet does not encode: %v", err)
	}
	in := b[:binary.BigEndian.Uint16(b[10:])]
	if in[12] == 0xff && in[13] == 0xff {
		in = append([]byte(nil), in...)
		in[12], in[13] = 0, 0
	}
	if !bytes.Equal(in, out) {
		t.Fatalf("re-encoding differs\n  in %x\n out %x", in, out)
	}
}

// FuzzRoundTrip: decode → encode → decode gives the same value.
func FuzzRoundTrip(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		var p1 Packet
		if err := p1.UnmarshalBinary(withChecksum(b)); err != nil {
			return
		}
		enc, err := p1.AppendBinary(nil)
		if err != nil {
			t.Fatalf("encode: %v", err)
		}
		p2, err := Decode(enc)
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if diff := cmp.Diff(&p1, p2, cmpOpts...); diff != "" {
			t.Fatalf("round trip differs:\n%s", diff)
		}
	})
}
