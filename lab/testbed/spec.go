// Package testbed builds DMVPN topologies in network namespaces on one
// machine: an "internet" namespace routing between NBMA subnets, hubs and
// spokes on it, hosts on a LAN behind each site, and optional NAT routers
// (nftables masquerade) between a site and the internet. It runs commands
// and long-running processes inside the nodes, collects their output and
// tears everything down, also after a failed or interrupted run (a sweep
// removes what a killed run left behind).
//
// It does not depend on package testing: New returns a Testbed whose Close
// the caller defers or registers with t.Cleanup. It is meant for every
// end-to-end test and for a lab command.
package testbed

import (
	"fmt"
	"net/netip"
)

// Kind is a site's role; it only names things (the harness wires hubs and
// spokes alike).
type Kind string

// Site kinds.
const (
	Hub   Kind = "hub"
	Spoke Kind = "spoke"
)

// Site is a hub or spoke attached to the internet.
type Site struct {
	// Name is the node name, short ([a-z0-9], ≤ 8 characters).
	Name string
	Kind Kind
	// NBMA is the site's internet address with its subnet
	// (198.51.100.1/24). The internet router takes the last usable address
	// of the subnet (.254 in a /24) as the site's gateway. With NAT the
	// prefix is the NAT router's public address and the site gets a
	// private uplink behind it.
	NBMA netip.Prefix
	// LAN, when valid, is the site's LAN address (10.1.0.1/24); Hosts
	// hosts are attached to it (addresses .2, .3, …).
	LAN   netip.Prefix
	Hosts int
	// NAT puts a masquerading router between the site and the internet.
	NAT bool
	// UplinkMTU sets the MTU of the internet router's link toward the site
	// (both ends); zero keeps 1500.
	UplinkMTU int
	// NBMA2, when valid, gives the site a second ISP: an interface wan1
	// with this address on a second internet router (inet2, gateway the
	// last usable address), which reaches the first through a transit
	// link. The site's main table keeps its default through wan0.
	NBMA2 netip.Prefix
}

// Probe hosts: addresses on the internet routers' loopbacks that uplink
// failover can probe. ProbeHosts answer through either ISP; ISP2Host only
// through the second (the first internet router has no route to it).
var (
	ProbeHosts = []netip.Addr{netip.MustParseAddr("192.0.2.253"), netip.MustParseAddr("192.0.2.254")}
	ISP2Host   = netip.MustParseAddr("203.0.113.253")
)

// The transit link between the two internet routers.
var (
	transitInet  = netip.MustParsePrefix("192.0.2.249/30")
	transitInet2 = netip.MustParsePrefix("192.0.2.250/30")
)

// Spec declares a topology.
type Spec struct {
	Sites []Site
	// Prefix names this run's namespaces; empty picks a unique one.
	Prefix string
}

func (s *Spec) validate() error {
	seen := map[string]bool{"inet": true, "inet2": true}
	for i, st := range s.Sites {
		if st.Name == "" || len(st.Name) > 8 {
			return fmt.Errorf("testbed: site %d: name %q must be 1-8 characters", i, st.Name)
		}
		for _, c := range st.Name {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
				return fmt.Errorf("testbed: site %q: name must be [a-z0-9]", st.Name)
			}
		}
		if seen[st.Name] {
			return fmt.Errorf("testbed: duplicate node name %q", st.Name)
		}
		seen[st.Name] = true
		if !st.NBMA.IsValid() || !st.NBMA.Addr().Is4() || st.NBMA.Bits() > 30 {
			return fmt.Errorf("testbed: site %q: NBMA %v must be an IPv4 prefix of at most /30", st.Name, st.NBMA)
		}
		if !docNet(st.NBMA.Addr()) {
			return fmt.Errorf("testbed: site %q: NBMA %v is outside the documentation ranges", st.Name, st.NBMA)
		}
		if st.LAN.IsValid() && !privNet(st.LAN.Addr()) {
			return fmt.Errorf("testbed: site %q: LAN %v is outside 10/8 and 172.16/12", st.Name, st.LAN)
		}
		if st.NBMA2.IsValid() && (!st.NBMA2.Addr().Is4() || st.NBMA2.Bits() > 30 || !docNet(st.NBMA2.Addr()) || st.NAT) {
			return fmt.Errorf("testbed: site %q: NBMA2 %v must be an IPv4 documentation prefix of at most /30, without NAT", st.Name, st.NBMA2)
		}
		if st.Hosts > 0 && !st.LAN.IsValid() {
			return fmt.Errorf("testbed: site %q: hosts need a LAN", st.Name)
		}
	}
	return nil
}

var (
	docNets  = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("203.0.113.0/24")}
	privNets = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("172.16.0.0/12")}
)

func docNet(a netip.Addr) bool  { return inAny(docNets, a) }
func privNet(a netip.Addr) bool { return inAny(privNets, a) }

func inAny(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// lastHost is the highest usable address of an IPv4 prefix.
func lastHost(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 2
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v += host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// nthHost is the address n after the prefix's own address.
func nthHost(p netip.Prefix, n int) netip.Prefix {
	a := p.Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v += uint32(n)
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), p.Bits())
}

// CutMode is how an ISP stops carrying a site's traffic.
type CutMode string

// Cut modes.
const (
	// CutDrop: the internet router drops everything to and from the
	// site's link (an nftables rule); the link stays up, so only probes
	// can tell.
	CutDrop CutMode = "drop"
	// CutLink: the router's end of the link goes down; the site's
	// interface loses its carrier.
	CutLink CutMode = "link"
)

// Logger receives a line per action when set (testing.T satisfies it).
type Logger interface {
	Logf(format string, args ...any)
}

// Option configures New.
type Option func(*Testbed)

// WithLogger logs every command the harness runs.
func WithLogger(l Logger) Option { return func(tb *Testbed) { tb.log = l } }
