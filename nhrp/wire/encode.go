package wire

import (
	"encoding/binary"
	"net/netip"
)

// MarshalBinary encodes p into a new buffer.
func (p *Packet) MarshalBinary() ([]byte, error) {
	return p.AppendBinary(make([]byte, 0, 128))
}

// AppendBinary appends the encoding of p to b and returns the extended
// buffer. It computes the packet size, the extension offset and the
// checksum, and appends an End extension when the last one is not End. It
// does not allocate when b has room for the packet. On error b is returned
// unchanged (up to its length).
func (p *Packet) AppendBinary(b []byte) ([]byte, error) {
	start := len(b)
	out, err := p.appendBinary(b)
	if err != nil {
		return b[:start], err
	}
	return out, nil
}

func (p *Packet) appendBinary(b []byte) ([]byte, error) {
	start := len(b)
	if !p.Type.Valid() {
		return b, &Error{Code: ErrorProtocol, Offset: 17, Err: ErrUnknownType}
	}
	e := encoder{nbmaLen: 4, protoLen: 4}
	afn, pro := p.AddrFamily, p.ProtoType
	if afn == 0 {
		afn = AFIPv4
		if p.SrcNBMA.Is6() {
			afn = AFIPv6
		}
	}
	if pro == 0 {
		pro = ProtoIPv4
		if p.SrcProto.Is6() || p.DstProto.Is6() {
			pro = ProtoIPv6
		}
	}
	switch afn {
	case AFIPv4:
	case AFIPv6:
		e.nbmaLen = 16
	default:
		return b, protoErr(0, ErrAddressFamily)
	}
	switch pro {
	case ProtoIPv4:
	case ProtoIPv6:
		e.protoLen = 16
	default:
		return b, protoErr(2, ErrProtocolType)
	}

	// Fixed header; size, checksum and extension offset are patched below.
	b = binary.BigEndian.AppendUint16(b, afn)
	b = binary.BigEndian.AppendUint16(b, pro)
	b = append(b, p.ProtoSNAP[:]...)
	b = append(b, p.HopCount)
	b = append(b, 0, 0, 0, 0, 0, 0) // size, checksum, extension offset
	b = append(b, Version, byte(p.Type))
	nbmaTL, err := e.tl(p.SrcNBMAType, p.SrcNBMA, e.nbmaLen)
	if err != nil {
		return b, err
	}
	subTL, err := rawTL(p.SrcNBMASubType, p.SrcNBMASub)
	if err != nil {
		return b, err
	}
	spl, err := e.tl(0, p.SrcProto, e.protoLen)
	if err != nil {
		return b, err
	}
	dpl, err := e.tl(0, p.DstProto, e.protoLen)
	if err != nil {
		return b, err
	}
	b = append(b, nbmaTL, subTL)

	// Mandatory part.
	b = append(b, spl, dpl)
	switch p.Type {
	case TypeErrorIndication:
		b = binary.BigEndian.AppendUint16(b, p.Flags)
		b = binary.BigEndian.AppendUint16(b, uint16(p.ErrorCode))
		b = binary.BigEndian.AppendUint16(b, p.ErrorOffset)
	case TypeTrafficIndication:
		b = binary.BigEndian.AppendUint16(b, uint16(p.TrafficCode))
		b = binary.BigEndian.AppendUint32(b, p.RequestID)
	default:
		b = binary.BigEndian.AppendUint16(b, p.Flags)
		b = binary.BigEndian.AppendUint32(b, p.RequestID)
	}
	b = appendAddr(b, p.SrcNBMA)
	b = append(b, p.SrcNBMASub...)
	b = appendAddr(b, p.SrcProto)
	b = appendAddr(b, p.DstProto)
	if p.Type.HasCIEs() {
		if len(p.Payload) != 0 {
			return b, &Error{Code: ErrorProtocol, Offset: len(b) - start, Err: ErrFieldRange,
				Detail: "payload in a " + p.Type.String()}
		}
		if b, err = e.appendCIEs(b, p.CIEs); err != nil {
			return b, err
		}
	} else {
		if len(p.CIEs) != 0 {
			return b, &Error{Code: ErrorProtocol, Offset: len(b) - start, Err: ErrFieldRange,
				Detail: "CIEs in a " + p.Type.String()}
		}
		b = append(b, p.Payload...)
	}

	// Extensions.
	if len(p.Extensions) > 0 {
		extOff := len(b) - start
		if extOff > 0xffff {
			return b, &Error{Code: ErrorSDUSizeExceeded, Offset: 14, Err: ErrTooBig}
		}
		binary.BigEndian.PutUint16(b[start+14:], uint16(extOff))
		for i := range p.Extensions {
			if p.Extensions[i].Type == ExtEnd && i != len(p.Extensions)-1 {
				return b, &Error{Code: ErrorInvalidExtension, Offset: len(b) - start, Err: ErrExtTrailing}
			}
			if b, err = e.appendExtension(b, &p.Extensions[i]); err != nil {
				return b, err
			}
		}
		if p.Extensions[len(p.Extensions)-1].Type != ExtEnd {
			b = append(b, 0x80, 0, 0, 0)
		}
	}

	size := len(b) - start
	if size > 0xffff {
		return b, &Error{Code: ErrorSDUSizeExceeded, Offset: 10, Err: ErrTooBig}
	}
	pkt := b[start:]
	binary.BigEndian.PutUint16(pkt[10:], uint16(size))
	binary.BigEndian.PutUint16(pkt[12:], Checksum(pkt))
	return b, nil
}

type encoder struct {
	nbmaLen, protoLen int
}

// tl returns the type/length octet of an address and checks that it fits
// the packet's family (want is the family's address length).
func (e *encoder) tl(t AddrType, a netip.Addr, want int) (byte, error) {
	if t&^0xc0 != 0 {
		return 0, &Error{Code: ErrorProtocol, Err: ErrFieldRange, Detail: "address type"}
	}
	if !a.IsValid() {
		return byte(t), nil
	}
	if (want == 4) != a.Is4() {
		return 0, &Error{Code: ErrorProtocol, Err: ErrAddressMismatch, Detail: a.String()}
	}
	return byte(t) | byte(want), nil
}

func rawTL(t AddrType, v []byte) (byte, error) {
	if t&^0xc0 != 0 || len(v) > 0x3f {
		return 0, &Error{Code: ErrorProtocol, Err: ErrFieldRange, Detail: "subaddress"}
	}
	return byte(t) | byte(len(v)), nil
}

func appendAddr(b []byte, a netip.Addr) []byte {
	switch {
	case !a.IsValid():
		return b
	case a.Is4():
		v := a.As4()
		return append(b, v[0], v[1], v[2], v[3])
	default:
		v := a.As16()
		return append(b, v[:]...)
	}
}

func (e *encoder) appendCIEs(b []byte, cies []CIE) ([]byte, error) {
	for i := range cies {
		c := &cies[i]
		ntl, err := e.tl(c.NBMAType, c.NBMA, e.nbmaLen)
		if err != nil {
			return b, err
		}
		stl, err := rawTL(c.NBMASubType, c.NBMASub)
		if err != nil {
			return b, err
		}
		pl, err := e.tl(0, c.Proto, e.protoLen)
		if err != nil {
			return b, err
		}
		b = append(b, byte(c.Code), c.PrefixLen)
		b = binary.BigEndian.AppendUint16(b, c.Reserved)
		b = binary.BigEndian.AppendUint16(b, c.MTU)
		b = binary.BigEndian.AppendUint16(b, c.HoldingTime)
		b = append(b, ntl, stl, pl, c.Preference)
		b = appendAddr(b, c.NBMA)
		b = append(b, c.NBMASub...)
		b = appendAddr(b, c.Proto)
	}
	return b, nil
}

func (e *encoder) appendExtension(b []byte, x *Extension) ([]byte, error) {
	if x.Type > 0x3fff {
		return b, &Error{Code: ErrorInvalidExtension, Err: ErrFieldRange, Detail: "extension type"}
	}
	th := uint16(x.Type)
	if x.Compulsory {
		th |= 0x8000
	}
	if x.Unused {
		th |= 0x4000
	}
	hdr := len(b)
	b = binary.BigEndian.AppendUint16(b, th)
	b = append(b, 0, 0)
	var err error
	switch {
	case x.Type == ExtEnd:
	case x.Type.HasCIEs():
		if b, err = e.appendCIEs(b, x.CIEs); err != nil {
			return b, err
		}
	case x.Type == ExtAuthentication:
		b = binary.BigEndian.AppendUint32(b, x.AuthType)
		b = append(b, x.Data...)
	case x.Type == ExtVendorPrivate:
		if x.VendorID > 0xffffff {
			return b, &Error{Code: ErrorInvalidExtension, Err: ErrFieldRange, Detail: "vendor ID"}
		}
		b = append(b, byte(x.VendorID>>16), byte(x.VendorID>>8), byte(x.VendorID))
		b = append(b, x.Data...)
	default:
		b = append(b, x.Data...)
	}
	n := len(b) - hdr - extHeaderLen
	if n > 0xffff {
		return b, &Error{Code: ErrorSDUSizeExceeded, Err: ErrTooBig}
	}
	binary.BigEndian.PutUint16(b[hdr+2:], uint16(n))
	return b, nil
}
