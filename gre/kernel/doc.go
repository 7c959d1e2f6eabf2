// Package kernel is the GRE data plane of production appliances: the
// kernel's ip_gre multipoint device (a key, no remote) encapsulates using
// the neighbour table (tunnel IP → NBMA address as a 4-byte lladdr), the
// way OpenNHRP and FRR's nhrpd drive it.
//
// NHRP travels on an AF_PACKET datagram socket for protocol 0x2001 bound to
// the device, addressed by the peer's 4-byte NBMA address. Neighbour misses
// are the kernel's own resolution requests: with the device's ARP turned on
// and app_solicit=1, ucast_solicit=mcast_solicit=0, an unresolved next hop
// produces an RTM_GETNEIGH event and nothing on the wire. ICMP redirects
// are turned off on the device (send_redirects=0): a hub relays between
// spokes on the same interface, and the redirect NHRP sends is its own.
//
// Multicast and broadcast packets leaving the device are captured on an
// AF_PACKET socket (outgoing only, filtered in BPF) and sent as unicast
// copies to each NBMA address of the multicast list. The kernel also emits
// the original toward the multicast address itself; the firewall drops
// GRE to multicast destinations on the underlay.
//
// All netlink calls go through nlops.Netlink, so the requests Open builds
// are tested against a recording fake on kernels without ip_gre.
package kernel
