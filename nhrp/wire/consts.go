package wire

import "strconv"

// Address family numbers (ar$afn) for the NBMA addresses.
const (
	AFIPv4 uint16 = 1
	AFIPv6 uint16 = 2
)

// Protocol types (ar$pro.type) for the protocol (tunnel) addresses, in the
// Ethertype short form.
const (
	ProtoIPv4 uint16 = 0x0800
	ProtoIPv6 uint16 = 0x86DD
)

// Version is the only NHRP version (ar$op.version).
const Version = 1

// Type is an NHRP packet type (ar$op.type).
type Type uint8

// Packet types.
const (
	TypeResolutionRequest   Type = 1
	TypeResolutionReply     Type = 2
	TypeRegistrationRequest Type = 3
	TypeRegistrationReply   Type = 4
	TypePurgeRequest        Type = 5
	TypePurgeReply          Type = 6
	TypeErrorIndication     Type = 7
	// TypeTrafficIndication is Cisco's redirect (DMVPN phase 3).
	TypeTrafficIndication Type = 8
)

var typeNames = [...]string{
	TypeResolutionRequest:   "Resolution Request",
	TypeResolutionReply:     "Resolution Reply",
	TypeRegistrationRequest: "Registration Request",
	TypeRegistrationReply:   "Registration Reply",
	TypePurgeRequest:        "Purge Request",
	TypePurgeReply:          "Purge Reply",
	TypeErrorIndication:     "Error Indication",
	TypeTrafficIndication:   "Traffic Indication",
}

// Valid reports whether t is a known packet type.
func (t Type) Valid() bool { return t >= TypeResolutionRequest && t <= TypeTrafficIndication }

// HasCIEs reports whether packets of type t carry Client Information
// Entries in their mandatory part (every type but Error and Traffic
// Indication, which quote a packet instead).
func (t Type) HasCIEs() bool { return t >= TypeResolutionRequest && t <= TypePurgeReply }

// IsRequest reports whether t is a request type that expects a reply.
func (t Type) IsRequest() bool {
	return t == TypeResolutionRequest || t == TypeRegistrationRequest || t == TypePurgeRequest
}

// Reply returns the reply type for a request type, or 0.
func (t Type) Reply() Type {
	if t.IsRequest() {
		return t + 1
	}
	return 0
}

func (t Type) String() string {
	if t.Valid() {
		return typeNames[t]
	}
	return "Type(" + strconv.Itoa(int(t)) + ")"
}

// Resolution Request/Reply flags.
const (
	ResFlagQ   uint16 = 0x8000 // the requester is a router
	ResFlagA   uint16 = 0x4000 // the reply is authoritative
	ResFlagD   uint16 = 0x2000 // the destination is stable
	ResFlagU   uint16 = 0x1000 // unique
	ResFlagS   uint16 = 0x0800 // the source binding is stable
	ResFlagNAT uint16 = 0x0002 // Cisco: the sender understands the NAT extension
)

// Registration Request/Reply flags.
const (
	RegFlagU   uint16 = 0x8000 // unique
	RegFlagNAT uint16 = 0x0002 // Cisco: the sender understands the NAT extension
)

// Purge Request/Reply flags.
const (
	PurgeFlagN uint16 = 0x8000 // no reply expected
)

// TrafficCode is the code of a Traffic Indication.
type TrafficCode uint16

// TrafficRedirect is the only traffic code in use: traffic between two
// spokes is being relayed and a shortcut would help.
const TrafficRedirect TrafficCode = 0

// CIECode is the code of a Client Information Entry in a reply.
type CIECode uint8

// CIE codes (RFC 2332 sections 5.2.2, 5.2.4).
const (
	CIESuccess               CIECode = 0
	CIEAdminProhibited       CIECode = 4
	CIEInsufficientResources CIECode = 5
	CIENoBinding             CIECode = 12
	CIENotUnique             CIECode = 13
	CIEAlreadyRegistered     CIECode = 14
)

func (c CIECode) String() string {
	switch c {
	case CIESuccess:
		return "success"
	case CIEAdminProhibited:
		return "administratively prohibited"
	case CIEInsufficientResources:
		return "insufficient resources"
	case CIENoBinding:
		return "no binding exists"
	case CIENotUnique:
		return "binding not unique"
	case CIEAlreadyRegistered:
		return "unique address already registered"
	}
	return "code " + strconv.Itoa(int(c))
}

// ErrorCode is the code of an Error Indication.
type ErrorCode uint16

// Error Indication codes (RFC 2332 section 5.2.7).
const (
	ErrorUnrecognizedExtension  ErrorCode = 1
	ErrorLoopDetected           ErrorCode = 3
	ErrorProtoAddrUnreachable   ErrorCode = 6
	ErrorProtocol               ErrorCode = 7
	ErrorSDUSizeExceeded        ErrorCode = 8
	ErrorInvalidExtension       ErrorCode = 9
	ErrorInvalidResolutionReply ErrorCode = 10
	ErrorAuthenticationFailure  ErrorCode = 11
	ErrorHopCountExceeded       ErrorCode = 15
)

func (c ErrorCode) String() string {
	switch c {
	case ErrorUnrecognizedExtension:
		return "unrecognized extension"
	case ErrorLoopDetected:
		return "loop detected"
	case ErrorProtoAddrUnreachable:
		return "protocol address unreachable"
	case ErrorProtocol:
		return "protocol error"
	case ErrorSDUSizeExceeded:
		return "SDU size exceeded"
	case ErrorInvalidExtension:
		return "invalid extension"
	case ErrorInvalidResolutionReply:
		return "invalid resolution reply"
	case ErrorAuthenticationFailure:
		return "authentication failure"
	case ErrorHopCountExceeded:
		return "hop count exceeded"
	}
	return "error " + strconv.Itoa(int(c))
}

// ExtType is an extension type, without the compulsory and unused bits.
type ExtType uint16

// Extension types.
const (
	ExtEnd              ExtType = 0
	ExtResponderAddress ExtType = 3
	ExtForwardTransit   ExtType = 4
	ExtReverseTransit   ExtType = 5
	ExtAuthentication   ExtType = 7
	ExtVendorPrivate    ExtType = 8
	// ExtNATAddress is Cisco's NAT Address extension.
	ExtNATAddress ExtType = 9
)

// Known reports whether the codec understands the extension's payload.
func (t ExtType) Known() bool {
	switch t {
	case ExtEnd, ExtResponderAddress, ExtForwardTransit, ExtReverseTransit,
		ExtAuthentication, ExtVendorPrivate, ExtNATAddress:
		return true
	}
	return false
}

// HasCIEs reports whether the extension's payload is a list of CIEs.
func (t ExtType) HasCIEs() bool {
	switch t {
	case ExtResponderAddress, ExtForwardTransit, ExtReverseTransit, ExtNATAddress:
		return true
	}
	return false
}

func (t ExtType) String() string {
	switch t {
	case ExtEnd:
		return "End"
	case ExtResponderAddress:
		return "Responder Address"
	case ExtForwardTransit:
		return "Forward Transit NHS Record"
	case ExtReverseTransit:
		return "Reverse Transit NHS Record"
	case ExtAuthentication:
		return "Authentication"
	case ExtVendorPrivate:
		return "Vendor-Private"
	case ExtNATAddress:
		return "Cisco NAT Address"
	}
	return "Extension(" + strconv.Itoa(int(t)) + ")"
}

// AuthCleartext is the authentication type of Cisco's cleartext password
// (the first four bytes of the Authentication extension).
const AuthCleartext uint32 = 1

// AddrType is the type part of an address type/length octet (the two high
// bits): bit 6 set means E.164 format, clear means NSAP format; bit 7 is
// reserved.
type AddrType uint8

// Address type values.
const (
	AddrNSAP AddrType = 0x00
	AddrE164 AddrType = 0x40
)

// Header and entry sizes.
const (
	FixedHeaderLen = 20 // the fixed header
	commonLen      = 8  // lengths, flags and request ID of the mandatory part
	CIEHeaderLen   = 12 // a CIE without its addresses
	extHeaderLen   = 4
)
