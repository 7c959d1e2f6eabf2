// Package inet holds the small IPv4/IPv6 helpers the GRE backends share:
// the Internet checksum and header field accessors. Pure functions, no I/O.
package inet

import "encoding/binary"

// Sum adds the 16-bit big-endian words of b to s (one's complement, not
// folded). An odd final byte is padded with zero.
func Sum(b []byte, s uint64) uint64 {
	for len(b) >= 8 {
		v := binary.BigEndian.Uint64(b)
		s += v >> 32
		s += v & 0xffffffff
		b = b[8:]
	}
	for len(b) >= 2 {
		s += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint64(b[0]) << 8
	}
	return s
}

// Fold folds a sum to 16 bits.
func Fold(s uint64) uint16 {
	for s > 0xffff {
		s = (s & 0xffff) + (s >> 16)
	}
	return uint16(s)
}

// Checksum returns the Internet checksum (RFC 1071) of b.
func Checksum(b []byte) uint16 { return ^Fold(Sum(b, 0)) }

// PseudoSum returns the sum of an IPv4 or IPv6 pseudo-header for a
// transport protocol and length; src and dst are 4 or 16 bytes.
func PseudoSum(src, dst []byte, proto uint8, length int) uint64 {
	s := Sum(src, 0)
	s = Sum(dst, s)
	return s + uint64(proto) + uint64(length)
}
