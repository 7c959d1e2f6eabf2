// Package wire is the NHRP wire codec: RFC 2332 with the Cisco DMVPN
// additions (the Traffic Indication packet, the NAT flag and the NAT
// Address extension, and Cisco's layout of the Authentication extension).
//
// It is pure: no I/O, standard library only. Decoding checks every length,
// size and offset against the buffer, verifies the checksum, never panics
// and allocates at most a small constant number of times in proportion to
// the packet itself. Decode errors are *Error values that carry the Error
// Indication code a receiver sends back. Encoding appends to a caller's
// buffer and computes the packet size, extension offset and checksum.
//
// A Packet models every field of the wire format, including reserved ones,
// so a decoded packet re-encodes to the same bytes.
package wire
