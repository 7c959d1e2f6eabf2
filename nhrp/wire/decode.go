package wire

import (
	"encoding/binary"
	"net/netip"
)

// Decode decodes one NHRP packet from b into a new Packet. Bytes after the
// packet size are ignored (link-layer padding). The returned Packet does
// not alias b.
func Decode(b []byte) (*Packet, error) {
	s := new(packetStore)
	p := &s.p
	p.buf, p.cies, p.Extensions = s.buf[:0], s.cies[:0], s.exts[:0]
	if err := p.UnmarshalBinary(b); err != nil {
		return nil, err
	}
	return p, nil
}

// packetStore lets Decode allocate a packet and room for a typical
// packet's bytes, CIEs and extensions at once. Larger packets grow out of
// it.
type packetStore struct {
	p    Packet
	buf  [128]byte
	cies [3]CIE
	exts [6]Extension
}

// UnmarshalBinary decodes one NHRP packet from b into p, reusing p's
// storage. On error p is left in an unspecified state. p does not alias b.
func (p *Packet) UnmarshalBinary(b []byte) error {
	if len(b) < FixedHeaderLen {
		return protoErr(0, ErrTruncated)
	}
	size := int(binary.BigEndian.Uint16(b[10:]))
	if size < FixedHeaderLen {
		return protoErr(10, ErrBadSize)
	}
	if size > len(b) {
		return &Error{Code: ErrorProtocol, Offset: 10, Err: ErrTruncated,
			Detail: "size field " + itoa(size) + ", " + itoa(len(b)) + " bytes received"}
	}
	b = b[:size]
	if Checksum(b) != 0 {
		return protoErr(12, ErrBadChecksum)
	}
	if b[16] != Version {
		return protoErr(16, ErrBadVersion)
	}

	// Own the bytes: every slice field of p aliases this copy.
	buf := append(p.buf[:0], b...)
	p.buf = buf
	b = buf

	d := decoder{b: b}
	p.AddrFamily = binary.BigEndian.Uint16(b[0:])
	p.ProtoType = binary.BigEndian.Uint16(b[2:])
	copy(p.ProtoSNAP[:], b[4:9])
	p.HopCount = b[9]
	p.Type = Type(b[17])
	if !p.Type.Valid() {
		return protoErr(17, ErrUnknownType)
	}
	switch p.AddrFamily {
	case AFIPv4:
		d.nbmaLen = 4
	case AFIPv6:
		d.nbmaLen = 16
	default:
		return protoErr(0, ErrAddressFamily)
	}
	switch p.ProtoType {
	case ProtoIPv4:
		d.protoLen = 4
	case ProtoIPv6:
		d.protoLen = 16
	default:
		return protoErr(2, ErrProtocolType)
	}

	extOff := int(binary.BigEndian.Uint16(b[14:]))
	end := size
	if extOff != 0 {
		if extOff < FixedHeaderLen+commonLen || extOff > size {
			return protoErr(14, ErrExtOffset)
		}
		end = extOff
	}
	if err := p.decodeMandatory(&d, end); err != nil {
		return err
	}
	p.Extensions = p.Extensions[:0]
	if extOff != 0 {
		if err := p.decodeExtensions(&d, extOff); err != nil {
			return err
		}
	}
	p.CIEs = nil
	if d.nMand > 0 {
		p.CIEs = p.cies[:d.nMand:d.nMand]
	}
	return nil
}

// decoder carries the address sizes of the packet being decoded and the
// CIE storage shared by the mandatory part and the extensions.
type decoder struct {
	b        []byte
	nbmaLen  int
	protoLen int
	nMand    int // CIEs of the mandatory part, first in Packet.cies
}

func (p *Packet) decodeMandatory(d *decoder, end int) error {
	b := d.b
	if end < FixedHeaderLen+commonLen {
		return protoErr(FixedHeaderLen, ErrMandatoryPart)
	}
	shtl, sstl := b[18], b[19]
	spl, dpl := int(b[20]), int(b[21])
	switch p.Type {
	case TypeErrorIndication:
		p.Flags = binary.BigEndian.Uint16(b[22:])
		p.ErrorCode = ErrorCode(binary.BigEndian.Uint16(b[24:]))
		p.ErrorOffset = binary.BigEndian.Uint16(b[26:])
		p.RequestID, p.TrafficCode = 0, 0
	case TypeTrafficIndication:
		p.TrafficCode = TrafficCode(binary.BigEndian.Uint16(b[22:]))
		p.RequestID = binary.BigEndian.Uint32(b[24:])
		p.Flags, p.ErrorCode, p.ErrorOffset = 0, 0, 0
	default:
		p.Flags = binary.BigEndian.Uint16(b[22:])
		p.RequestID = binary.BigEndian.Uint32(b[24:])
		p.ErrorCode, p.ErrorOffset, p.TrafficCode = 0, 0, 0
	}

	off := FixedHeaderLen + commonLen
	var err error
	p.SrcNBMAType = AddrType(shtl & 0xc0)
	if p.SrcNBMA, off, err = d.addr(off, end, int(shtl&0x3f), d.nbmaLen, 18); err != nil {
		return err
	}
	p.SrcNBMASubType = AddrType(sstl & 0xc0)
	if p.SrcNBMASub, off, err = d.raw(off, end, int(sstl&0x3f)); err != nil {
		return err
	}
	if p.SrcProto, off, err = d.addr(off, end, spl, d.protoLen, 20); err != nil {
		return err
	}
	if p.DstProto, off, err = d.addr(off, end, dpl, d.protoLen, 21); err != nil {
		return err
	}

	p.cies = p.cies[:0]
	p.Payload = nil
	if !p.Type.HasCIEs() {
		if off < end {
			p.Payload = b[off:end:end]
		}
		return nil
	}
	p.cies, err = d.cies(p.cies, off, end)
	d.nMand = len(p.cies)
	return err
}

// cies decodes CIEs filling b[off:end] exactly and appends them to dst.
func (d *decoder) cies(dst []CIE, off, end int) ([]CIE, error) {
	for off < end {
		if end-off < CIEHeaderLen {
			return dst, protoErr(off, ErrCIE)
		}
		b := d.b
		start := off
		var c CIE
		c.Code = CIECode(b[off])
		c.PrefixLen = b[off+1]
		c.Reserved = binary.BigEndian.Uint16(b[off+2:])
		c.MTU = binary.BigEndian.Uint16(b[off+4:])
		c.HoldingTime = binary.BigEndian.Uint16(b[off+6:])
		ntl, stl, pl := b[off+8], b[off+9], int(b[off+10])
		c.Preference = b[off+11]
		off += CIEHeaderLen
		var err error
		c.NBMAType = AddrType(ntl & 0xc0)
		if c.NBMA, off, err = d.addr(off, end, int(ntl&0x3f), d.nbmaLen, start+8); err != nil {
			return dst, err
		}
		c.NBMASubType = AddrType(stl & 0xc0)
		if c.NBMASub, off, err = d.raw(off, end, int(stl&0x3f)); err != nil {
			return dst, err
		}
		if c.Proto, off, err = d.addr(off, end, pl, d.protoLen, start+10); err != nil {
			return dst, err
		}
		dst = append(dst, c)
	}
	return dst, nil
}

// addr decodes an address of length n at off, which must be 0 or want.
// lenOff is where the length was read, for the error offset.
func (d *decoder) addr(off, end, n, want, lenOff int) (netip.Addr, int, error) {
	if n == 0 {
		return netip.Addr{}, off, nil
	}
	if n != want {
		return netip.Addr{}, off, protoErr(lenOff, ErrAddressLength)
	}
	if end-off < n {
		return netip.Addr{}, off, protoErr(off, ErrMandatoryPart)
	}
	if n == 4 {
		return netip.AddrFrom4([4]byte(d.b[off : off+4])), off + 4, nil
	}
	return netip.AddrFrom16([16]byte(d.b[off : off+16])), off + 16, nil
}

// raw returns n bytes at off (a subaddress), nil when n is zero.
func (d *decoder) raw(off, end, n int) ([]byte, int, error) {
	if n == 0 {
		return nil, off, nil
	}
	if end-off < n {
		return nil, off, protoErr(off, ErrMandatoryPart)
	}
	return d.b[off : off+n : off+n], off + n, nil
}

func (p *Packet) decodeExtensions(d *decoder, off int) error {
	b := d.b
	size := len(b)
	for {
		if size-off < extHeaderLen {
			if off == size {
				return extErr(off, ErrExtMissingEnd)
			}
			return extErr(off, ErrExtOverrun)
		}
		th := binary.BigEndian.Uint16(b[off:])
		n := int(binary.BigEndian.Uint16(b[off+2:]))
		start := off
		off += extHeaderLen
		if size-off < n {
			return extErr(start, ErrExtOverrun)
		}
		e := Extension{
			Type:       ExtType(th & 0x3fff),
			Compulsory: th&0x8000 != 0,
			Unused:     th&0x4000 != 0,
		}
		v := b[off : off+n : off+n]
		off += n
		switch e.Type {
		case ExtEnd:
			if n != 0 {
				return extErr(start, ErrExtPayload)
			}
			p.Extensions = append(p.Extensions, e)
			if off != size {
				return extErr(off, ErrExtTrailing)
			}
			return nil
		case ExtResponderAddress, ExtForwardTransit, ExtReverseTransit, ExtNATAddress:
			first := len(p.cies)
			var err error
			p.cies, err = d.cies(p.cies, start+extHeaderLen, off)
			if err != nil {
				err.(*Error).Code = ErrorInvalidExtension
				return err
			}
			if n := len(p.cies); n > first {
				e.CIEs = p.cies[first:n:n]
			}
		case ExtAuthentication:
			if n < 4 {
				return extErr(start, ErrExtPayload)
			}
			e.AuthType = binary.BigEndian.Uint32(v)
			e.Data = v[4:]
		case ExtVendorPrivate:
			if n < 3 {
				return extErr(start, ErrExtPayload)
			}
			e.VendorID = uint32(v[0])<<16 | uint32(v[1])<<8 | uint32(v[2])
			e.Data = v[3:]
		default:
			e.Data = v
		}
		p.Extensions = append(p.Extensions, e)
	}
}

func itoa(i int) string {
	var buf [20]byte
	n := len(buf)
	neg := i < 0
	if neg {
		i = -i
	}
	for {
		n--
		buf[n] = byte('0' + i%10)
		i /= 10
		if i == 0 {
			break
		}
	}
	if neg {
		n--
		buf[n] = '-'
	}
	return string(buf[n:])
}
