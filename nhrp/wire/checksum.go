package wire

import "encoding/binary"

// Checksum returns the 16-bit one's complement of the one's complement sum
// of b, padded with a zero byte when its length is odd: the Internet
// checksum that NHRP uses over the whole packet.
func Checksum(b []byte) uint16 {
	return ^fold(sum(b))
}

func sum(b []byte) uint64 {
	var s uint64
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

func fold(s uint64) uint16 {
	for s > 0xffff {
		s = (s >> 16) + (s & 0xffff)
	}
	return uint16(s)
}
