package wire

import (
	"net/netip"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// cmpOpts compare packets by value.
var cmpOpts = []cmp.Option{
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmpopts.IgnoreUnexported(Packet{}),
	cmpopts.EquateEmpty(),
}

// addressSet is one family combination for sample packets.
type addressSet struct {
	name                         string
	nbmaA, nbmaB, nbmaC          netip.Addr
	protoA, protoB, protoC, lanB netip.Addr
	hostLen                      uint8
}

var addressSets = []addressSet{
	{
		name:  "ipv4",
		nbmaA: netip.MustParseAddr("192.0.2.11"), nbmaB: netip.MustParseAddr("198.51.100.12"),
		nbmaC:  netip.MustParseAddr("203.0.113.1"),
		protoA: netip.MustParseAddr("10.0.0.11"), protoB: netip.MustParseAddr("10.0.0.12"),
		protoC: netip.MustParseAddr("10.0.0.1"), lanB: netip.MustParseAddr("10.12.0.0"), hostLen: 32,
	},
	{
		name:  "ipv6",
		nbmaA: netip.MustParseAddr("2001:db8::11"), nbmaB: netip.MustParseAddr("2001:db8:1::12"),
		nbmaC:  netip.MustParseAddr("2001:db8:2::1"),
		protoA: netip.MustParseAddr("fd00::11"), protoB: netip.MustParseAddr("fd00::12"),
		protoC: netip.MustParseAddr("fd00::1"), lanB: netip.MustParseAddr("fd12::"), hostLen: 128,
	},
	{
		// IPv6 tunnel addresses over an IPv4 underlay, as DMVPN runs IPv6.
		name:  "ipv6-over-ipv4",
		nbmaA: netip.MustParseAddr("192.0.2.11"), nbmaB: netip.MustParseAddr("198.51.100.12"),
		nbmaC:  netip.MustParseAddr("203.0.113.1"),
		protoA: netip.MustParseAddr("fd00::11"), protoB: netip.MustParseAddr("fd00::12"),
		protoC: netip.MustParseAddr("fd00::1"), lanB: netip.MustParseAddr("fd12::"), hostLen: 128,
	},
}

// allExtensions returns one extension of every kind the codec knows, plus
// an unknown compulsory one and an unknown optional one.
func allExtensions(s addressSet) []Extension {
	hub := CIE{MTU: 1472, HoldingTime: 7200, NBMA: s.nbmaC, Proto: s.protoC}
	return []Extension{
		{Type: ExtResponderAddress, Compulsory: true, CIEs: []CIE{{PrefixLen: s.hostLen, MTU: 1472, HoldingTime: 7200, NBMA: s.nbmaB, Proto: s.protoB}}},
		{Type: ExtForwardTransit, Compulsory: true, CIEs: []CIE{hub}},
		{Type: ExtReverseTransit, Compulsory: true, CIEs: []CIE{hub}},
		NewCiscoAuth([]byte("secret")),
		{Type: ExtVendorPrivate, VendorID: 0x00000c, Data: []byte{1, 2, 3}},
		{Type: ExtNATAddress, CIEs: []CIE{{PrefixLen: s.hostLen, NBMA: s.nbmaC, Proto: s.protoC}, {PrefixLen: s.hostLen, NBMA: s.nbmaA, Proto: s.protoA}}},
		{Type: 0x1234, Data: []byte("opaque")},
		{Type: 0x3801, Compulsory: true, Data: []byte{0xde, 0xad}},
		{Type: ExtEnd, Compulsory: true},
	}
}

// samplePackets returns one packet of every type, each with every
// extension, in every address-family combination.
func samplePackets() []*Packet {
	var out []*Packet
	for _, s := range addressSets {
		base := func(t Type, flags uint16, cies ...CIE) *Packet {
			return &Packet{
				HopCount: 64, Type: t, Flags: flags, RequestID: 0x01020304,
				SrcNBMA: s.nbmaA, SrcProto: s.protoA, DstProto: s.protoB,
				CIEs: cies, Extensions: allExtensions(s),
			}
		}
		req := CIE{PrefixLen: s.hostLen, MTU: 1472, HoldingTime: 7200}
		reply := CIE{PrefixLen: 24, MTU: 1472, HoldingTime: 7200, NBMA: s.nbmaB, Proto: s.lanB, Preference: 10}
		if s.hostLen == 128 {
			reply.PrefixLen = 64
		}
		ti := base(TypeTrafficIndication, 0)
		ti.TrafficCode, ti.RequestID, ti.Payload = TrafficRedirect, 0, quotedIP(s)
		// An Error Indication quotes the packet in error and has no
		// extensions.
		inError, err := base(TypeResolutionRequest, ResFlagQ, req).MarshalBinary()
		if err != nil {
			panic(err)
		}
		ei := base(TypeErrorIndication, 0)
		ei.ErrorCode, ei.ErrorOffset, ei.RequestID, ei.Payload = ErrorLoopDetected, 52, 0, inError
		ei.Extensions = nil
		refused := CIE{Code: CIEAlreadyRegistered, PrefixLen: 255, MTU: 1472, HoldingTime: 7200}
		out = append(out,
			base(TypeResolutionRequest, ResFlagQ|ResFlagS|ResFlagNAT, req),
			base(TypeResolutionReply, ResFlagQ|ResFlagA|ResFlagD|ResFlagU|ResFlagS|ResFlagNAT, reply),
			base(TypeRegistrationRequest, RegFlagU|RegFlagNAT, req),
			base(TypeRegistrationReply, RegFlagU|RegFlagNAT, refused),
			base(TypePurgeRequest, PurgeFlagN, CIE{PrefixLen: 24, Proto: s.lanB}),
			base(TypePurgeReply, 0, CIE{PrefixLen: 24, Proto: s.lanB}),
			ei, ti,
		)
	}
	return out
}

// quotedIP returns the start of a LAN-to-LAN ICMP echo as a hub quotes it
// in a Traffic Indication: the IP header says 100 bytes, 28 are quoted.
func quotedIP(s addressSet) []byte {
	if s.protoA.Is4() {
		return []byte{0x45, 0, 0, 100, 0, 1, 0, 0, 63, 1, 0, 0, 10, 11, 0, 5, 10, 12, 0, 5, 8, 0, 0, 0, 0, 1, 0, 1}
	}
	b := []byte{0x60, 0, 0, 0, 0, 60, 58, 63}
	src, dst := netip.MustParseAddr("fd11::5").As16(), netip.MustParseAddr("fd12::5").As16()
	b = append(b, src[:]...)
	b = append(b, dst[:]...)
	return append(b, 128, 0, 0, 0, 0, 1, 0, 1)
}
