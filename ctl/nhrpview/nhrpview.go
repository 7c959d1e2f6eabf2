// Package nhrpview renders decoded NHRP packets for people and programs:
// a JSON object with stable keys, and a readable text form. The decoder
// command and the shell's live NHRP debugging share it.
package nhrpview

import (
	"encoding/binary"
	"encoding/hex"
	"net/netip"

	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// CIE is the JSON form of a Client Information Entry.
type CIE struct {
	Code        int    `json:"code"`
	PrefixLen   int    `json:"prefix_len"`
	MTU         int    `json:"mtu"`
	HoldingTime int    `json:"holding_time"`
	NBMA        string `json:"nbma"`
	Proto       string `json:"proto"`
	Preference  int    `json:"preference"`
}

// Extension is the JSON form of an extension.
type Extension struct {
	Type       int    `json:"type"`
	Name       string `json:"name"`
	Compulsory bool   `json:"compulsory"`
	// CIEs is set, possibly empty, for the extension types that carry CIEs.
	CIEs *[]CIE `json:"cies,omitempty"`
	// Authentication: the type (1 = Cisco cleartext) and the password.
	AuthType *uint32 `json:"auth_type,omitempty"`
	Password *string `json:"password,omitempty"`
	// Vendor-Private: the OUI.
	VendorID *uint32 `json:"vendor_id,omitempty"`
	// Data is the rest of the payload in hex (vendor data, unknown types).
	Data string `json:"data,omitempty"`
}

// Packet is the JSON form of an NHRP packet. Addresses are text, empty
// when the packet carries none. Error holds the decode error of a packet
// that does not decode; the other keys may then be missing.
type Packet struct {
	Frame        int         `json:"frame,omitempty"`
	Time         string      `json:"time,omitempty"`
	OuterSrc     string      `json:"outer_src,omitempty"`
	OuterDst     string      `json:"outer_dst,omitempty"`
	GREKey       *uint32     `json:"gre_key,omitempty"`
	Type         *int        `json:"type,omitempty"`
	TypeName     string      `json:"type_name,omitempty"`
	AddrFamily   *int        `json:"afn,omitempty"`
	ProtoType    *int        `json:"protocol_type,omitempty"`
	HopCount     *int        `json:"hop_count,omitempty"`
	Size         *int        `json:"size,omitempty"`
	Checksum     string      `json:"checksum,omitempty"`
	ExtOffset    *int        `json:"extension_offset,omitempty"`
	RequestID    *uint32     `json:"request_id,omitempty"`
	Flags        *int        `json:"flags,omitempty"`
	FlagNames    []string    `json:"flag_names,omitempty"`
	ErrorCode    *int        `json:"error_code,omitempty"`
	ErrorName    string      `json:"error_name,omitempty"`
	ErrorOffset  *int        `json:"error_offset,omitempty"`
	TrafficCode  *int        `json:"traffic_code,omitempty"`
	SrcNBMA      *string     `json:"src_nbma,omitempty"`
	SrcNBMASub   string      `json:"src_nbma_subaddress,omitempty"`
	SrcProto     *string     `json:"src_proto,omitempty"`
	DstProto     *string     `json:"dst_proto,omitempty"`
	CIEs         []CIE       `json:"cies"`
	Payload      string      `json:"payload,omitempty"`
	Quoted       string      `json:"quoted,omitempty"`
	Extensions   []Extension `json:"extensions"`
	Error        string      `json:"error,omitempty"`
	ErrorIndCode *int        `json:"error_indication_code,omitempty"`
}

func ptr[T any](v T) *T { return &v }

func addr(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func cies(cs []wire.CIE) []CIE {
	out := make([]CIE, 0, len(cs))
	for _, c := range cs {
		out = append(out, CIE{
			Code: int(c.Code), PrefixLen: int(c.PrefixLen), MTU: int(c.MTU),
			HoldingTime: int(c.HoldingTime), NBMA: addr(c.NBMA), Proto: addr(c.Proto),
			Preference: int(c.Preference),
		})
	}
	return out
}

// FromPacket returns the JSON form of a decoded packet. raw is the packet
// as received; it supplies the size, checksum and extension offset.
func FromPacket(p *wire.Packet, raw []byte) Packet {
	v := Packet{
		Type: ptr(int(p.Type)), TypeName: p.Type.String(),
		AddrFamily: ptr(int(p.AddrFamily)), ProtoType: ptr(int(p.ProtoType)),
		HopCount: ptr(int(p.HopCount)),
		SrcNBMA:  ptr(addr(p.SrcNBMA)), SrcProto: ptr(addr(p.SrcProto)), DstProto: ptr(addr(p.DstProto)),
		CIEs: cies(p.CIEs), Extensions: make([]Extension, 0, len(p.Extensions)),
	}
	if len(raw) >= wire.FixedHeaderLen {
		v.Size = ptr(int(binary.BigEndian.Uint16(raw[10:])))
		v.Checksum = "0x" + hex.EncodeToString(raw[12:14])
		v.ExtOffset = ptr(int(binary.BigEndian.Uint16(raw[14:])))
	}
	if len(p.SrcNBMASub) > 0 {
		v.SrcNBMASub = hex.EncodeToString(p.SrcNBMASub)
	}
	switch p.Type {
	case wire.TypeErrorIndication:
		v.RequestID, v.Flags = ptr(uint32(0)), ptr(int(p.Flags))
		v.ErrorCode, v.ErrorName = ptr(int(p.ErrorCode)), p.ErrorCode.String()
		v.ErrorOffset = ptr(int(p.ErrorOffset))
		v.Payload = hex.EncodeToString(p.Payload)
		if q, err := wire.Decode(p.Payload); err == nil {
			v.Quoted = q.Summary()
		}
	case wire.TypeTrafficIndication:
		v.RequestID, v.Flags = ptr(p.RequestID), ptr(0)
		v.TrafficCode = ptr(int(p.TrafficCode))
		v.Payload = hex.EncodeToString(p.Payload)
		v.Quoted = QuotedIP(p.Payload)
	default:
		v.RequestID, v.Flags = ptr(p.RequestID), ptr(int(p.Flags))
		v.FlagNames = FlagNames(p.Type, p.Flags)
	}
	for _, e := range p.Extensions {
		x := Extension{Type: int(e.Type), Name: e.Type.String(), Compulsory: e.Compulsory}
		switch {
		case e.Type.HasCIEs():
			x.CIEs = ptr(cies(e.CIEs))
		case e.Type == wire.ExtAuthentication:
			x.AuthType = ptr(e.AuthType)
			if e.AuthType == wire.AuthCleartext {
				x.Password = ptr(string(e.Data))
			} else {
				x.Data = hex.EncodeToString(e.Data)
			}
		case e.Type == wire.ExtVendorPrivate:
			x.VendorID = ptr(e.VendorID)
			x.Data = hex.EncodeToString(e.Data)
		default:
			x.Data = hex.EncodeToString(e.Data)
		}
		v.Extensions = append(v.Extensions, x)
	}
	return v
}

// FromError returns the JSON form of a packet that does not decode.
func FromError(err error) Packet {
	v := Packet{Error: err.Error()}
	if e, ok := err.(*wire.Error); ok {
		v.ErrorIndCode = ptr(int(e.Code))
	}
	return v
}

// FlagNames returns the names of the flags set for a packet type.
func FlagNames(t wire.Type, flags uint16) []string {
	var names []struct {
		bit  uint16
		name string
	}
	switch t {
	case wire.TypeResolutionRequest, wire.TypeResolutionReply:
		names = []struct {
			bit  uint16
			name string
		}{{wire.ResFlagQ, "Q"}, {wire.ResFlagA, "A"}, {wire.ResFlagD, "D"}, {wire.ResFlagU, "U"}, {wire.ResFlagS, "S"}, {wire.ResFlagNAT, "NAT"}}
	case wire.TypeRegistrationRequest, wire.TypeRegistrationReply:
		names = []struct {
			bit  uint16
			name string
		}{{wire.RegFlagU, "U"}, {wire.RegFlagNAT, "NAT"}}
	case wire.TypePurgeRequest, wire.TypePurgeReply:
		names = []struct {
			bit  uint16
			name string
		}{{wire.PurgeFlagN, "N"}}
	}
	var out []string
	for _, n := range names {
		if flags&n.bit != 0 {
			out = append(out, n.name)
		}
	}
	return out
}
