package wire

import "net/netip"

// Packet is an NHRP packet: the fixed header, the mandatory part and the
// extensions. Size, checksum and extension offset are not fields: encoding
// computes them and decoding checks them.
//
// Addresses are netip.Addr; an invalid (zero) Addr is an address of length
// zero on the wire. NBMA addresses must match AddrFamily and protocol
// addresses must match ProtoType.
type Packet struct {
	// AddrFamily is the NBMA address family (AFIPv4 or AFIPv6). Zero when
	// encoding means: IPv6 if SrcNBMA is IPv6, else IPv4.
	AddrFamily uint16
	// ProtoType is the protocol address type (ProtoIPv4 or ProtoIPv6). Zero
	// when encoding means: IPv6 if SrcProto or DstProto is IPv6, else IPv4.
	ProtoType uint16
	// ProtoSNAP is the SNAP part of the protocol type, zero for IP.
	ProtoSNAP [5]byte
	HopCount  uint8
	Type      Type

	// Flags of a request or reply (ResFlag*, RegFlag*, PurgeFlag*). In an
	// Error Indication the same two bytes are unused and kept here.
	Flags uint16
	// RequestID of a request or reply. In a Traffic Indication the four
	// bytes after the traffic code are kept here.
	RequestID uint32
	// ErrorCode and ErrorOffset of an Error Indication.
	ErrorCode   ErrorCode
	ErrorOffset uint16
	// TrafficCode of a Traffic Indication.
	TrafficCode TrafficCode

	SrcNBMAType    AddrType
	SrcNBMA        netip.Addr
	SrcNBMASubType AddrType
	SrcNBMASub     []byte
	SrcProto       netip.Addr
	DstProto       netip.Addr

	// CIEs of a request, reply or purge.
	CIEs []CIE
	// Payload of an Error Indication (the packet in error) or a Traffic
	// Indication (the start of the packet that triggered it).
	Payload []byte

	// Extensions in wire order. A decoded packet with extensions ends with
	// the End extension; when encoding, End (compulsory) is appended if the
	// last extension is not End.
	Extensions []Extension

	buf  []byte // decoded bytes, aliased by the slice fields
	cies []CIE  // decoded CIEs: the mandatory part's, then the extensions'
}

// CIE is a Client Information Entry.
type CIE struct {
	Code        CIECode
	PrefixLen   uint8
	Reserved    uint16 // the unused field, kept as received
	MTU         uint16
	HoldingTime uint16
	NBMAType    AddrType
	NBMA        netip.Addr
	NBMASubType AddrType
	NBMASub     []byte
	Proto       netip.Addr
	Preference  uint8
}

// Extension is one extension. Which fields are used depends on Type:
// Responder Address, the Transit NHS Records and the NAT Address carry
// CIEs; Authentication carries AuthType and Data (the password in Cisco's
// cleartext form); Vendor-Private carries VendorID and Data; any other type
// keeps its payload in Data.
type Extension struct {
	Type       ExtType
	Compulsory bool
	// Unused is the reserved bit next to the compulsory bit, kept as
	// received.
	Unused bool

	CIEs []CIE
	// AuthType is the first four bytes of an Authentication extension:
	// Cisco's authentication type (AuthCleartext), RFC 2332's reserved
	// field and SPI.
	AuthType uint32
	// VendorID is the IEEE OUI of a Vendor-Private extension (24 bits).
	VendorID uint32
	Data     []byte
}

// Extension returns the first extension of type t, or nil.
func (p *Packet) Extension(t ExtType) *Extension {
	for i := range p.Extensions {
		if p.Extensions[i].Type == t {
			return &p.Extensions[i]
		}
	}
	return nil
}

// UnknownCompulsory returns the first extension that is compulsory and not
// understood by this codec. A receiver must refuse such a packet with an
// Error Indication (ErrorUnrecognizedExtension); a forwarder passes it on.
func (p *Packet) UnknownCompulsory() (*Extension, bool) {
	for i := range p.Extensions {
		if e := &p.Extensions[i]; e.Compulsory && !e.Type.Known() {
			return e, true
		}
	}
	return nil, false
}

// Auth returns the password of the Authentication extension in Cisco's
// cleartext form and whether there is one.
func (p *Packet) Auth() ([]byte, bool) {
	e := p.Extension(ExtAuthentication)
	if e == nil || e.AuthType != AuthCleartext {
		return nil, false
	}
	return e.Data, true
}

// NewCiscoAuth returns an Authentication extension carrying a cleartext
// password in Cisco's layout.
func NewCiscoAuth(password []byte) Extension {
	return Extension{Type: ExtAuthentication, Compulsory: true, AuthType: AuthCleartext, Data: password}
}

// CIECount returns the number of CIEs the packet carries, in its body and
// its extensions together.
func (p *Packet) CIECount() int {
	n := len(p.CIEs)
	for i := range p.Extensions {
		n += len(p.Extensions[i].CIEs)
	}
	return n
}
