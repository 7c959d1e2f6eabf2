package userspace

import (
	"fmt"
	"net/netip"
)

// aliasTable maps peers' NBMA addresses to the addresses their GRE
// packets carry on the wire, and back. IPsec in tunnel mode needs it for
// a peer behind NAT: the inner packets carry the peer's private address
// (its traffic selector), while NHRP knows the peer by the address its
// packets come from after NAT.
type aliasTable struct {
	wire map[[4]byte][4]byte // NBMA → on the wire
	nbma map[[4]byte][4]byte // on the wire → NBMA
}

// SetPeerAliases replaces the aliases: packets to NBMA address k go out
// addressed to m[k], and packets from m[k] are taken as coming from k.
// Neither side may repeat an address or be the other side of another
// alias; an invalid set changes nothing.
func (d *Device) SetPeerAliases(m map[netip.Addr]netip.Addr) error {
	if len(m) == 0 {
		d.alias.Store(nil)
		return nil
	}
	t := &aliasTable{wire: make(map[[4]byte][4]byte, len(m)), nbma: make(map[[4]byte][4]byte, len(m))}
	for k, v := range m {
		if !k.Is4() || !v.Is4() {
			return fmt.Errorf("userspace: peer alias %s → %s: IPv4 only", k, v)
		}
		if k == v {
			continue
		}
		if _, dup := t.nbma[v.As4()]; dup {
			return fmt.Errorf("userspace: peer alias %s → %s: %s is already another peer's", k, v, v)
		}
		t.wire[k.As4()] = v.As4()
		t.nbma[v.As4()] = k.As4()
	}
	for k := range t.wire {
		if _, both := t.nbma[k]; both {
			return fmt.Errorf("userspace: peer alias: %s is both an NBMA address and an alias", netip.AddrFrom4(k))
		}
	}
	d.alias.Store(t)
	return nil
}

// wireAddr is the address packets to NBMA address a carry.
func (d *Device) wireAddr(a [4]byte) [4]byte {
	if t := d.alias.Load(); t != nil {
		if w, ok := t.wire[a]; ok {
			return w
		}
	}
	return a
}

// peerAddr is the NBMA address of a peer whose packets carry a.
func (d *Device) peerAddr(a netip.Addr) netip.Addr {
	if t := d.alias.Load(); t != nil && a.Is4() {
		if n, ok := t.nbma[a.As4()]; ok {
			return netip.AddrFrom4(n)
		}
	}
	return a
}
