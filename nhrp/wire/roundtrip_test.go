package wire

import (
	"bytes"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestRoundTrip encodes every sample packet, decodes it and requires the
// same value, then re-encodes and requires the same bytes.
func TestRoundTrip(t *testing.T) {
	for _, want := range samplePackets() {
		b, err := want.MarshalBinary()
		if err != nil {
			t.Fatalf("%v: encode: %v", want.Type, err)
		}
		if Checksum(b) != 0 {
			t.Fatalf("%v: encoded checksum does not verify", want.Type)
		}
		got, err := Decode(b)
		if err != nil {
			t.Fatalf("%v: decode: %v", want.Type, err)
		}
		if want.AddrFamily == 0 {
			want.AddrFamily = got.AddrFamily
			want.ProtoType = got.ProtoType
		}
		if diff := cmp.Diff(want, got, cmpOpts...); diff != "" {
			t.Errorf("%v: round trip differs (-want +got):\n%s", want.Type, diff)
		}
		b2, err := got.AppendBinary(nil)
		if err != nil || !bytes.Equal(b, b2) {
			t.Errorf("%v: re-encoding differs: %v", want.Type, err)
		}
	}
}

// TestDecodeReuse decodes different packets into one Packet and checks
// that nothing of an earlier packet leaks into a later one.
func TestDecodeReuse(t *testing.T) {
	samples := samplePackets()
	var p Packet
	for i := 0; i < 3; i++ {
		for _, s := range samples {
			b, err := s.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			if err := p.UnmarshalBinary(b); err != nil {
				t.Fatal(err)
			}
			fresh, _ := Decode(b)
			if diff := cmp.Diff(fresh, &p, cmpOpts...); diff != "" {
				t.Fatalf("reused decode differs from fresh decode:\n%s", diff)
			}
		}
	}
}

// TestAppendKeepsPrefix checks that AppendBinary appends after existing
// bytes and computes the checksum over the packet only.
func TestAppendKeepsPrefix(t *testing.T) {
	p := samplePackets()[2]
	prefix := []byte("GRE-HEADER")
	b, err := p.AppendBinary(append([]byte(nil), prefix...))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, prefix) {
		t.Fatal("prefix overwritten")
	}
	if _, err := Decode(b[len(prefix):]); err != nil {
		t.Fatal(err)
	}
}

// TestTrailingPadding: bytes after the packet size (link-layer padding)
// are ignored.
func TestTrailingPadding(t *testing.T) {
	b, _ := samplePackets()[0].MarshalBinary()
	want, _ := Decode(b)
	got, err := Decode(append(b, 0, 0, 0, 0, 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got, cmpOpts...); diff != "" {
		t.Fatal(diff)
	}
}

// TestOddChecksum covers an odd packet length, as in Cisco's 81-byte
// registration.
func TestOddChecksum(t *testing.T) {
	p := &Packet{Type: TypeRegistrationRequest, HopCount: 1,
		SrcNBMA: addressSets[0].nbmaA, SrcProto: addressSets[0].protoA, DstProto: addressSets[0].protoC,
		CIEs:       []CIE{{PrefixLen: 255, MTU: 1514, HoldingTime: 30}},
		Extensions: []Extension{NewCiscoAuth([]byte("CISCO"))}}
	b, err := p.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if len(b)%2 != 1 {
		t.Fatalf("want an odd length, got %d", len(b))
	}
	if _, err := Decode(b); err != nil {
		t.Fatal(err)
	}
	b[len(b)-1] ^= 1
	if _, err := Decode(b); err == nil {
		t.Fatal("corrupted last byte of an odd-length packet passed the checksum")
	}
}

func TestChecksumKnown(t *testing.T) {
	// RFC 1071's example: 0001 f203 f4f5 f6f7 sums to ddf2, checksum 220d.
	if got := Checksum([]byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}); got != 0x220d {
		t.Fatalf("checksum %#04x, want 0x220d", got)
	}
}
