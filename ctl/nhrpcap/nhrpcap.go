// Package nhrpcap finds NHRP packets in packet captures: it reads pcap and
// pcapng files, strips the link layer (Ethernet with or without VLAN tags,
// Linux cooked capture v1 and v2, raw IP, BSD loopback), the outer IPv4 or
// IPv6 header and GRE (with its checksum, key and sequence number), and
// yields every GRE payload of protocol 0x2001. Everything else is skipped.
package nhrpcap

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"github.com/opendmvpn/dmvpn/gre"
)

// ProtoNHRP is the GRE protocol type of NHRP.
const ProtoNHRP = 0x2001

// Frame is one NHRP packet found in a capture.
type Frame struct {
	// Number is the 1-based frame number in the file.
	Number int
	Time   time.Time
	// OuterSrc and OuterDst are the addresses of the IP header carrying GRE.
	OuterSrc, OuterDst netip.Addr
	// GRE header fields.
	KeyPresent bool
	Key        uint32
	SeqPresent bool
	Seq        uint32
	// NHRP is the GRE payload (it may be truncated by the capture length).
	NHRP []byte
}

// Stats counts what a scan saw.
type Stats struct {
	Frames  int // frames in the file
	NHRP    int // NHRP packets found
	Skipped int // frames without NHRP (other traffic, fragments, unknown link types)
}

// linkReader is what pcapgo's pcap and pcapng readers have in common.
type linkReader interface {
	ReadPacketData() ([]byte, gopacket.CaptureInfo, error)
}

// Scan reads a pcap or pcapng capture from r and calls fn for every NHRP
// packet in it, in file order. It stops at the first error fn returns.
func Scan(r io.Reader, fn func(*Frame) error) (Stats, error) {
	var st Stats
	br := bufio.NewReader(r)
	magic, err := br.Peek(4)
	if err != nil {
		return st, fmt.Errorf("not a capture file: %w", err)
	}
	var lr linkReader
	var linkOf func(ci gopacket.CaptureInfo) layers.LinkType
	if bytes.Equal(magic, []byte{0x0a, 0x0d, 0x0d, 0x0a}) {
		ng, err := pcapgo.NewNgReader(br, pcapgo.DefaultNgReaderOptions)
		if err != nil {
			return st, fmt.Errorf("reading pcapng: %w", err)
		}
		lr = ng
		linkOf = func(ci gopacket.CaptureInfo) layers.LinkType {
			if intf, err := ng.Interface(ci.InterfaceIndex); err == nil {
				return intf.LinkType
			}
			return ng.LinkType()
		}
	} else {
		pr, err := pcapgo.NewReader(br)
		if err != nil {
			return st, fmt.Errorf("reading pcap: %w", err)
		}
		lr = pr
		linkOf = func(gopacket.CaptureInfo) layers.LinkType { return pr.LinkType() }
	}
	for {
		data, ci, err := lr.ReadPacketData()
		if errors.Is(err, io.EOF) {
			return st, nil
		}
		if err != nil {
			// A truncated last record is common when a capture was cut
			// short; report what was read so far.
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return st, nil
			}
			return st, fmt.Errorf("frame %d: %w", st.Frames+1, err)
		}
		st.Frames++
		f := Frame{Number: st.Frames, Time: ci.Timestamp}
		if !parseLink(linkOf(ci), data, &f) {
			st.Skipped++
			continue
		}
		st.NHRP++
		if err := fn(&f); err != nil {
			return st, err
		}
	}
}

// Link types not named by gopacket.
const (
	linkTypeLinuxSLL2  = 276
	linkTypeRawOpenBSD = 14
	linkTypeRawDLT     = 12
)

// parseLink strips the link layer and continues with the network layer.
func parseLink(lt layers.LinkType, b []byte, f *Frame) bool {
	switch lt {
	case layers.LinkTypeEthernet:
		if len(b) < 14 {
			return false
		}
		et := binary.BigEndian.Uint16(b[12:])
		b = b[14:]
		for et == 0x8100 || et == 0x88a8 || et == 0x9100 {
			if len(b) < 4 {
				return false
			}
			et = binary.BigEndian.Uint16(b[2:])
			b = b[4:]
		}
		return parseEtherType(et, b, f)
	case layers.LinkTypeLinuxSLL:
		if len(b) < 16 {
			return false
		}
		return parseEtherType(binary.BigEndian.Uint16(b[14:]), b[16:], f)
	case linkTypeLinuxSLL2:
		if len(b) < 20 {
			return false
		}
		return parseEtherType(binary.BigEndian.Uint16(b[0:]), b[20:], f)
	case layers.LinkTypeRaw, layers.LinkTypeIPv4, layers.LinkTypeIPv6, linkTypeRawOpenBSD, linkTypeRawDLT:
		return parseIP(b, f)
	case layers.LinkTypeNull, layers.LinkTypeLoop:
		if len(b) < 4 {
			return false
		}
		return parseIP(b[4:], f)
	}
	return false
}

func parseEtherType(et uint16, b []byte, f *Frame) bool {
	switch et {
	case 0x0800, 0x86dd:
		return parseIP(b, f)
	}
	return false
}

// parseIP handles an IPv4 or IPv6 header carrying GRE. Fragments are
// skipped.
func parseIP(b []byte, f *Frame) bool {
	if len(b) < 1 {
		return false
	}
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return false
		}
		ihl := int(b[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(b[2:]))
		if ihl < 20 || len(b) < ihl || total < ihl {
			return false
		}
		if frag := binary.BigEndian.Uint16(b[6:]); frag&0x3fff != 0 {
			return false // a fragment: GRE is only in whole packets
		}
		if b[9] != 47 {
			return false
		}
		f.OuterSrc = netip.AddrFrom4([4]byte(b[12:16]))
		f.OuterDst = netip.AddrFrom4([4]byte(b[16:20]))
		if total < len(b) {
			b = b[:total] // drop link-layer padding
		}
		return parseGRE(b[ihl:], f)
	case 6:
		if len(b) < 40 {
			return false
		}
		f.OuterSrc = netip.AddrFrom16([16]byte(b[8:24]))
		f.OuterDst = netip.AddrFrom16([16]byte(b[24:40]))
		if n := 40 + int(binary.BigEndian.Uint16(b[4:])); n < len(b) {
			b = b[:n]
		}
		next, off := b[6], 40
		for {
			if off > len(b) {
				return false // an extension header runs past the packet
			}
			switch next {
			case 47:
				return parseGRE(b[off:], f)
			case 0, 43, 60: // hop-by-hop, routing, destination options
				if len(b) < off+8 {
					return false
				}
				next, off = b[off], off+8+int(b[off+1])*8
			default: // fragments and anything else
				return false
			}
		}
	}
	return false
}

// parseGRE strips a GRE version 0 header (gre.ParseHeader) and keeps
// payloads of protocol NHRP. A checksum is not required to match: the
// capture may hold only the start of the packet.
func parseGRE(b []byte, f *Frame) bool {
	h, n, err := gre.ParseHeader(b)
	if err != nil && !errors.Is(err, gre.ErrChecksum) {
		return false
	}
	if h.Protocol != ProtoNHRP {
		return false
	}
	f.KeyPresent, f.Key = h.HasKey, h.Key
	f.SeqPresent, f.Seq = h.HasSeq, h.Seq
	f.NHRP = b[n:]
	return true
}
