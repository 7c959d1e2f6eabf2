// Package userspace is the GRE data plane for kernels without ip_gre: a TUN
// device is the tunnel interface and a raw IPv4 socket carries GRE
// (protocol 47), as wireguard-go is to the kernel's WireGuard.
//
// Outgoing packets are read from the TUN in batches (with TSO/checksum
// offloads, so one read returns a whole TCP burst), given a next hop by the
// kernel's own routing decision (RTM_GETROUTE, cached per destination and
// invalidated by route, rule, address and link events from a netlink
// subscription), mapped to an NBMA address through the neighbour table and
// sent with sendmmsg on an IP_HDRINCL socket that never enters Go's
// netpoller. A next hop without a neighbour entry raises a rate-limited
// gre.Miss and its packets wait in a small bounded hold queue until the
// entry appears. Incoming GRE is received with recvmmsg (IP_PKTINFO gives
// the arrival interface), checked (key, checksum), and written to the TUN
// in batches (TCP GRO); GRO super-packets from the underlay are written
// whole as GSO packets.
//
// Routes live in the kernel's tables on the TUN device, so `ip route` works
// as with the kernel backend. Neighbour entries live in this package: the
// kernel keys every IPv4 neighbour of a point-to-point device (a TUN is one)
// as 0.0.0.0, so the kernel cannot hold one entry per tunnel next hop there.
package userspace
