// Package gre is the tunnel data plane: a multipoint GRE interface, NHRP
// packet I/O over it, neighbour entries (tunnel IP → NBMA address) and
// neighbour-miss events. It knows nothing of NHRP semantics.
//
// Three backends implement Device: kernel (ip_gre, AF_PACKET for NHRP),
// userspace (a TUN device and a raw GRE socket) and ebpf (the userspace
// backend with TC BPF programs forwarding); package backend chooses one
// (auto, kernel, ebpf, userspace) and says why. An in-memory
// implementation for tests lives in package gretest.
//
// The control plane programs neighbours through SetNeighbor, not netlink
// directly: the kernel backend keeps them in the kernel's neighbour table
// (4-byte lladdr), the userspace backend in its own table, because the
// kernel keys every IPv4 neighbour of a point-to-point device such as a TUN
// as 0.0.0.0. Routes live in the kernel's tables for both backends.
package gre

import (
	"context"
	"errors"
	"net/netip"
	"time"
)

// ProtoNHRP is the GRE protocol type that carries NHRP.
const ProtoNHRP = 0x2001

// ErrClosed is returned by every method of a Device after Close.
var ErrClosed = errors.New("gre: device closed")

// Info describes a tunnel device as the control plane sees it.
type Info struct {
	// Name and Index identify the tunnel's network interface.
	Name  string
	Index int
	// Key is the GRE key; HasKey says whether one is configured.
	Key    uint32
	HasKey bool
	// Prefix is the tunnel address with its prefix length (10.0.0.1/24).
	Prefix netip.Prefix
	// NBMA lists the node's own NBMA (underlay) addresses, first the one
	// the tunnel sources its packets from.
	NBMA []netip.Addr
	// MTU is the tunnel interface MTU (inner packets).
	MTU int
	// Backend names the implementation ("kernel", "userspace", …), for
	// people; the control plane decides by Caps.
	Backend string
	// Caps says what the data plane does, which decides how it is
	// protected and tuned.
	Caps Capabilities
}

// Capabilities say what a data plane does with GRE, so the control plane
// asks instead of comparing backend names.
type Capabilities struct {
	// KernelNeighbors: the neighbour entries are the kernel's (ip_gre):
	// they count toward the kernel's neighbour table limits (gc_thresh)
	// and an entry in use is confirmed through app probes.
	KernelNeighbors bool
	// XfrmESP: every GRE packet goes through the kernel's IP output and
	// input as protocol 47, where xfrm policies apply, so kernel ESP in
	// transport mode (and its catch-all block policies) protects it.
	XfrmESP bool
	// RoutedGRE: every GRE packet the kernel's IP stack sends is routed
	// as protocol 47, so policy rules by ipproto (userspace ESP's
	// prohibit rule) apply to it.
	RoutedGRE bool
	// FastPath: packets are forwarded in the kernel outside the IP stack
	// (TC BPF redirects), past netfilter, the policy rules and xfrm; with
	// userspace ESP it enforces the protection itself (IPsecEnforcer).
	FastPath bool
	// KernelESPByDefault: ipsec mode auto picks kernel ESP for this data
	// plane (a kernel with ip_gre has xfrm ESP; the TUN data planes run
	// where it may be missing, and use userspace ESP).
	KernelESPByDefault bool
}

// Neighbor is a neighbour entry: a tunnel protocol address reachable at an
// NBMA address.
type Neighbor struct {
	Proto netip.Addr
	NBMA  netip.Addr
	// Static marks an entry that does not expire (NUD_PERMANENT).
	Static bool
	// LastUsed is when the data plane last sent a packet through the entry;
	// zero if unknown or never.
	LastUsed time.Time
}

// Miss reports that a packet needed a tunnel next hop for which no
// neighbour entry exists.
type Miss struct {
	// NextHop is the tunnel protocol address that needs resolving.
	NextHop netip.Addr
	// Dst is the destination of the packet that triggered the miss, when
	// known (the userspace backends know it; the kernel does not tell).
	Dst netip.Addr
}

// Route is a route through the tunnel interface.
type Route struct {
	Dst      netip.Prefix
	Via      netip.Addr // tunnel next hop; invalid for a directly attached route
	Table    int
	Protocol int
	MTU      int
}

// Device is a multipoint GRE tunnel as the NHRP engine and the daemon use
// it. Every method is safe for concurrent use. After Close every method
// returns ErrClosed.
type Device interface {
	// Info describes the device.
	Info() Info

	// ReadNHRP blocks until an NHRP packet arrives and copies it into b. It
	// returns the number of bytes and the sender's NBMA address (the outer
	// source address).
	ReadNHRP(b []byte) (n int, from netip.Addr, err error)
	// WriteNHRP sends an NHRP packet to an NBMA address, GRE-encapsulated
	// with the tunnel's key.
	WriteNHRP(b []byte, to netip.Addr) error

	// SetNeighbor adds or replaces a neighbour entry. Packets held for
	// its next hop (userspace) or queued by the kernel go out.
	SetNeighbor(ctx context.Context, n Neighbor) error
	// DeleteNeighbor removes the neighbour entry for a tunnel address; it
	// is not an error if none exists.
	DeleteNeighbor(ctx context.Context, proto netip.Addr) error
	// Neighbors lists the neighbour entries of the tunnel device.
	Neighbors(ctx context.Context) ([]Neighbor, error)
	// Misses delivers neighbour-miss events. The channel is closed by Close.
	Misses() <-chan Miss

	// SetMulticast sets the NBMA addresses that packets to multicast or
	// broadcast tunnel destinations are replicated to.
	SetMulticast(nbma []netip.Addr) error

	// ReplaceRoute adds or replaces a route through the tunnel device.
	ReplaceRoute(ctx context.Context, r Route) error
	// DeleteRoute removes a route; it is not an error if none exists.
	DeleteRoute(ctx context.Context, r Route) error
	// Routes lists the routes through the tunnel device in a table.
	Routes(ctx context.Context, table int) ([]Route, error)

	// Counters returns a snapshot of the data-plane counters.
	Counters() Counters

	// Close releases the device. The kernel state the device created (the
	// interface, its neighbours and routes) is removed unless the device
	// was opened with Config.KeepState.
	Close() error
}

// PeerAliaser is implemented by data planes that can address a peer on
// the wire by another address than its NBMA address: IPsec in tunnel mode
// with a peer behind NAT, where the inner GRE packets carry the peer's
// private address while NHRP knows it by its public one.
type PeerAliaser interface {
	// SetPeerAliases replaces every alias: packets to NBMA address k go
	// out addressed to m[k], and packets from m[k] count as from k.
	SetPeerAliases(m map[netip.Addr]netip.Addr) error
}

// IPsecEnforcer is implemented by data planes that forward GRE where
// Config.AcceptIngress and the kernel's routing rules do not see it (the
// ebpf fast path). Once told, GRE leaves only through the interfaces
// isIPsec accepts (charon's ipsec TUN), never out of an NBMA interface in
// clear, and AcceptIngress is asked again for every interface.
type IPsecEnforcer interface {
	RequireIPsec(isIPsec func(ifindex int) bool) error
}

// NeighborOp is one neighbour change of a batch: Neighbor set (added or
// replaced), or, with Delete, the entry of Neighbor.Proto removed.
type NeighborOp struct {
	Neighbor
	Delete bool
}

// NeighborBatcher is implemented by data planes that program many
// neighbour entries at once for the cost of one (the kernel's: one netlink
// message and one read of the answers per batch). A hub registering
// thousands of spokes programs them through it.
type NeighborBatcher interface {
	// ApplyNeighbors applies ops in order and returns one error per op
	// (nil: applied; deleting an absent entry is not an error).
	ApplyNeighbors(ctx context.Context, ops []NeighborOp) []error
}
