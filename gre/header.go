package gre

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/opendmvpn/dmvpn/gre/internal/inet"
)

// GRE flag bits in the first 16-bit word (RFC 2784, RFC 2890).
const (
	flagChecksum = 0x8000
	flagRouting  = 0x4000
	flagKey      = 0x2000
	flagSeq      = 0x1000
	flagsOther   = 0x0ff8 // strict source route, recursion, reserved0
	versionMask  = 0x0007
)

// Payload protocol types carried in GRE.
const (
	ProtoIPv4 = 0x0800
	ProtoIPv6 = 0x86DD
)

// Header errors. ParseHeader wraps one of them.
var (
	ErrTruncated = errors.New("gre: truncated header")
	ErrVersion   = errors.New("gre: unsupported version or flags")
	ErrChecksum  = errors.New("gre: bad checksum")
)

// Header is a GRE header as used by DMVPN: version 0, no routing, optional
// checksum, key and sequence number.
type Header struct {
	Protocol    uint16
	HasChecksum bool
	HasKey      bool
	Key         uint32
	HasSeq      bool
	Seq         uint32
}

// Len returns the encoded length: 4 bytes plus 4 for each optional field.
func (h *Header) Len() int {
	n := 4
	if h.HasChecksum {
		n += 4
	}
	if h.HasKey {
		n += 4
	}
	if h.HasSeq {
		n += 4
	}
	return n
}

// Marshal writes the header at the start of pkt, which holds the header
// space followed by the payload (the checksum covers both). It returns the
// header length. pkt must be at least h.Len() bytes.
func (h *Header) Marshal(pkt []byte) int {
	var flags uint16
	off := 4
	if h.HasChecksum {
		flags |= flagChecksum
		pkt[4], pkt[5], pkt[6], pkt[7] = 0, 0, 0, 0
		off += 4
	}
	if h.HasKey {
		flags |= flagKey
		binary.BigEndian.PutUint32(pkt[off:], h.Key)
		off += 4
	}
	if h.HasSeq {
		flags |= flagSeq
		binary.BigEndian.PutUint32(pkt[off:], h.Seq)
		off += 4
	}
	binary.BigEndian.PutUint16(pkt[0:], flags)
	binary.BigEndian.PutUint16(pkt[2:], h.Protocol)
	if h.HasChecksum {
		binary.BigEndian.PutUint16(pkt[4:], inet.Checksum(pkt))
	}
	return off
}

// ParseHeader decodes the GRE header at the start of pkt (header and
// payload) and returns it with its length. A present checksum is verified
// over the whole of pkt; when it does not match, the header and its length
// are still returned, with ErrChecksum (a capture reader that may hold a
// truncated packet can go on). Version 1 (PPTP), the routing bit and the
// deprecated strict-source-route/recursion bits are refused.
func ParseHeader(pkt []byte) (Header, int, error) {
	var h Header
	if len(pkt) < 4 {
		return h, 0, fmt.Errorf("%w: %d bytes", ErrTruncated, len(pkt))
	}
	flags := binary.BigEndian.Uint16(pkt)
	if flags&(versionMask|flagRouting|flagsOther) != 0 {
		return h, 0, fmt.Errorf("%w: flags %#04x", ErrVersion, flags)
	}
	h.Protocol = binary.BigEndian.Uint16(pkt[2:])
	h.HasChecksum = flags&flagChecksum != 0
	h.HasKey = flags&flagKey != 0
	h.HasSeq = flags&flagSeq != 0
	n := h.Len()
	if len(pkt) < n {
		return h, 0, fmt.Errorf("%w: %d bytes, header needs %d", ErrTruncated, len(pkt), n)
	}
	off := 4
	if h.HasChecksum {
		off += 4
	}
	if h.HasKey {
		h.Key = binary.BigEndian.Uint32(pkt[off:])
		off += 4
	}
	if h.HasSeq {
		h.Seq = binary.BigEndian.Uint32(pkt[off:])
	}
	if h.HasChecksum && inet.Fold(inet.Sum(pkt, 0)) != 0xffff {
		return h, n, ErrChecksum
	}
	return h, n, nil
}

// DropReasonOf maps a ParseHeader error to a drop reason.
func DropReasonOf(err error) DropReason {
	switch {
	case errors.Is(err, ErrChecksum):
		return DropBadChecksum
	case errors.Is(err, ErrVersion):
		return DropUnsupported
	default:
		return DropMalformed
	}
}
