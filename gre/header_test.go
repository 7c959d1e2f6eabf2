package gre

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestHeaderRoundTrip(t *testing.T) {
	payload := []byte{0x45, 0, 0, 20, 1, 2, 3, 4, 5}
	tests := []struct {
		name string
		h    Header
		want []byte // header bytes (checksum excluded when HasChecksum)
	}{
		{"plain", Header{Protocol: ProtoIPv4}, []byte{0, 0, 8, 0}},
		{"key", Header{Protocol: ProtoNHRP, HasKey: true, Key: 1001}, []byte{0x20, 0, 0x20, 0x01, 0, 0, 0x03, 0xe9}},
		{"key+seq", Header{Protocol: ProtoIPv6, HasKey: true, Key: 7, HasSeq: true, Seq: 0x01020304},
			[]byte{0x30, 0, 0x86, 0xdd, 0, 0, 0, 7, 1, 2, 3, 4}},
		{"all", Header{Protocol: ProtoIPv4, HasChecksum: true, HasKey: true, Key: 9, HasSeq: true, Seq: 1}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pkt := make([]byte, tt.h.Len()+len(payload))
			copy(pkt[tt.h.Len():], payload)
			n := tt.h.Marshal(pkt)
			if n != tt.h.Len() {
				t.Fatalf("Marshal = %d, Len = %d", n, tt.h.Len())
			}
			if tt.want != nil {
				if diff := cmp.Diff(tt.want, pkt[:n]); diff != "" {
					t.Errorf("bytes (-want +got):\n%s", diff)
				}
			}
			got, m, err := ParseHeader(pkt)
			if err != nil {
				t.Fatalf("ParseHeader: %v", err)
			}
			if m != n {
				t.Errorf("parsed length %d, want %d", m, n)
			}
			if diff := cmp.Diff(tt.h, got); diff != "" {
				t.Errorf("header (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseHeaderErrors(t *testing.T) {
	good := make([]byte, 16)
	(&Header{Protocol: ProtoIPv4, HasChecksum: true, HasKey: true, Key: 5}).Marshal(good)
	corrupt := bytes.Clone(good)
	corrupt[10] ^= 0x40
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrTruncated},
		{"short", []byte{0, 0, 8}, ErrTruncated},
		{"key missing", []byte{0x20, 0, 8, 0, 1}, ErrTruncated},
		{"version 1", []byte{0x20, 0x01, 0x88, 0x0b, 0, 0, 0, 0}, ErrVersion},
		{"routing", []byte{0x40, 0, 8, 0, 0, 0, 0, 0}, ErrVersion},
		{"recursion", []byte{0x01, 0, 8, 0}, ErrVersion},
		{"bad checksum", corrupt, ErrChecksum},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := ParseHeader(tt.in)
			if !errors.Is(err, tt.want) {
				t.Fatalf("ParseHeader = %v, want %v", err, tt.want)
			}
		})
	}
	if _, _, err := ParseHeader(good); err != nil {
		t.Fatalf("good packet: %v", err)
	}
	if got := DropReasonOf(ErrChecksum); got != DropBadChecksum {
		t.Errorf("DropReasonOf(ErrChecksum) = %v", got)
	}
}

// TestHeaderRandom compares the codec with a naive model on seeded random
// headers.
func TestHeaderRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 2000; i++ {
		h := Header{Protocol: uint16(r.Uint32()), HasChecksum: r.IntN(2) == 0, HasKey: r.IntN(2) == 0, HasSeq: r.IntN(2) == 0}
		if h.HasKey {
			h.Key = r.Uint32()
		}
		if h.HasSeq {
			h.Seq = r.Uint32()
		}
		payload := make([]byte, r.IntN(64))
		for j := range payload {
			payload[j] = byte(r.Uint32())
		}
		pkt := make([]byte, h.Len()+len(payload))
		copy(pkt[h.Len():], payload)
		h.Marshal(pkt)
		// naive model of the first word
		wantFlags := 0
		if h.HasChecksum {
			wantFlags |= 0x80
		}
		if h.HasKey {
			wantFlags |= 0x20
		}
		if h.HasSeq {
			wantFlags |= 0x10
		}
		if int(pkt[0]) != wantFlags || pkt[1] != 0 {
			t.Fatalf("flags %#x %#x, want %#x 0", pkt[0], pkt[1], wantFlags)
		}
		got, _, err := ParseHeader(pkt)
		if err != nil {
			t.Fatalf("iteration %d: %v", i, err)
		}
		if diff := cmp.Diff(h, got); diff != "" {
			t.Fatalf("iteration %d (-want +got):\n%s", i, diff)
		}
		if !bytes.Equal(pkt[h.Len():], payload) {
			t.Fatalf("payload changed")
		}
	}
}

// FuzzParseHeader checks that parsing never panics and that every header it
// accepts re-encodes to the same bytes.
func FuzzParseHeader(f *testing.F) {
	f.Add([]byte{0x20, 0, 0x20, 0x01, 0, 0, 0x03, 0xe9, 0, 1, 2})
	f.Add([]byte{0xb0, 0, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, n, err := ParseHeader(b)
		if err != nil {
			return
		}
		if n != h.Len() || n > len(b) {
			t.Fatalf("length %d, Len %d, input %d", n, h.Len(), len(b))
		}
		out := bytes.Clone(b)
		h.Marshal(out)
		// The checksum and Reserved1 (sent as zero, ignored on receive)
		// may differ; everything else must be identical, and the
		// re-encoding must verify (re-parse below).
		cmpOut := bytes.Clone(out)
		if h.HasChecksum {
			copy(cmpOut[4:8], b[4:8])
		}
		if !bytes.Equal(cmpOut, b) {
			t.Fatalf("re-encoding differs:\n in %x\nout %x", b, out)
		}
		h2, n2, err := ParseHeader(out)
		if err != nil || n2 != n {
			t.Fatalf("re-parse: %v (%d vs %d)", err, n2, n)
		}
		if diff := cmp.Diff(h, h2); diff != "" {
			t.Fatalf("re-parse (-first +second):\n%s", diff)
		}
	})
}
