package wire

import (
	"fmt"
	"net/netip"
)

// Summary is a one-line description of the packet: type, hop count,
// request ID (or error or traffic code) and addresses, as a log line or a
// quoted packet shows it.
func (p *Packet) Summary() string {
	s := fmt.Sprintf("%s, hop %d, src NBMA %s, %s -> %s", p.Type, p.HopCount,
		addrOrDash(p.SrcNBMA), addrOrDash(p.SrcProto), addrOrDash(p.DstProto))
	switch p.Type {
	case TypeErrorIndication:
		s += fmt.Sprintf(", error %d (%s) at offset %d", p.ErrorCode, p.ErrorCode, p.ErrorOffset)
	case TypeTrafficIndication:
		s += fmt.Sprintf(", traffic code %d", p.TrafficCode)
	default:
		s += fmt.Sprintf(", id %d", p.RequestID)
	}
	return s
}

// addrOrDash prints an address, or "-" for the zero Addr.
func addrOrDash(a netip.Addr) string {
	if !a.IsValid() {
		return "-"
	}
	return a.String()
}
