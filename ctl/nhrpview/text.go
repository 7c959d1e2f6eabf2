package nhrpview

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

func orDash(a netip.Addr) string {
	if !a.IsValid() {
		return "-"
	}
	return a.String()
}

// QuotedIP describes the start of an IP packet quoted by a Traffic
// Indication, or returns "" when it is not one.
func QuotedIP(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return ""
		}
		return fmt.Sprintf("IPv4 %s -> %s proto %d, %d bytes (%d quoted)",
			netip.AddrFrom4([4]byte(b[12:16])), netip.AddrFrom4([4]byte(b[16:20])),
			b[9], binary.BigEndian.Uint16(b[2:]), len(b))
	case 6:
		if len(b) < 40 {
			return ""
		}
		return fmt.Sprintf("IPv6 %s -> %s next header %d, %d bytes (%d quoted)",
			netip.AddrFrom16([16]byte(b[8:24])), netip.AddrFrom16([16]byte(b[24:40])),
			b[6], 40+int(binary.BigEndian.Uint16(b[4:])), len(b))
	}
	return ""
}

// Text renders a decoded packet in a readable multi-line form.
func Text(p *wire.Packet) string {
	var b strings.Builder
	fmt.Fprintf(&b, "  %s (%d), hop count %d, afn %d, protocol %#04x\n", p.Type, p.Type, p.HopCount, p.AddrFamily, p.ProtoType)
	switch p.Type {
	case wire.TypeErrorIndication:
		fmt.Fprintf(&b, "  error %d (%s) at offset %d\n", p.ErrorCode, p.ErrorCode, p.ErrorOffset)
	case wire.TypeTrafficIndication:
		fmt.Fprintf(&b, "  traffic code %d\n", p.TrafficCode)
	default:
		fmt.Fprintf(&b, "  request id %d, flags %#04x %s\n", p.RequestID, p.Flags, strings.Join(FlagNames(p.Type, p.Flags), " "))
	}
	fmt.Fprintf(&b, "  src NBMA %s, src proto %s, dst proto %s\n", orDash(p.SrcNBMA), orDash(p.SrcProto), orDash(p.DstProto))
	for _, c := range p.CIEs {
		fmt.Fprintf(&b, "  CIE %s\n", cieText(c))
	}
	switch p.Type {
	case wire.TypeErrorIndication:
		if q, err := wire.Decode(p.Payload); err == nil {
			fmt.Fprintf(&b, "  packet in error: %s\n", q.Summary())
		} else {
			fmt.Fprintf(&b, "  packet in error: %d bytes\n", len(p.Payload))
		}
	case wire.TypeTrafficIndication:
		if q := QuotedIP(p.Payload); q != "" {
			fmt.Fprintf(&b, "  quoted packet: %s\n", q)
		} else {
			fmt.Fprintf(&b, "  quoted packet: %d bytes\n", len(p.Payload))
		}
	}
	for _, e := range p.Extensions {
		c := ""
		if e.Compulsory {
			c = " [compulsory]"
		}
		fmt.Fprintf(&b, "  extension %s%s", e.Type, c)
		switch {
		case e.Type.HasCIEs():
			fmt.Fprintf(&b, ", %d CIE(s)\n", len(e.CIEs))
			for _, c := range e.CIEs {
				fmt.Fprintf(&b, "    CIE %s\n", cieText(c))
			}
			continue
		case e.Type == wire.ExtAuthentication && e.AuthType == wire.AuthCleartext:
			fmt.Fprintf(&b, ": cleartext %s", strconv.Quote(string(e.Data)))
		case e.Type == wire.ExtAuthentication:
			fmt.Fprintf(&b, ": type %d, %d bytes", e.AuthType, len(e.Data))
		case e.Type == wire.ExtVendorPrivate:
			fmt.Fprintf(&b, ": OUI %06x, %d bytes", e.VendorID, len(e.Data))
		case len(e.Data) > 0:
			fmt.Fprintf(&b, ": %d bytes", len(e.Data))
		}
		b.WriteByte('\n')
	}
	return b.String()
}

func cieText(c wire.CIE) string {
	return fmt.Sprintf("code %d (%s), prefix /%d, mtu %d, holding time %ds, NBMA %s, proto %s, preference %d",
		c.Code, c.Code, c.PrefixLen, c.MTU, c.HoldingTime, orDash(c.NBMA), orDash(c.Proto), c.Preference)
}
