package nhrp

import (
	"context"
	"errors"
	"net/netip"

	"github.com/opendmvpn/dmvpn/gre"
)

// Tunnel is the data plane the engine drives. gre.Device implements it.
type Tunnel interface {
	Info() gre.Info
	ReadNHRP(b []byte) (n int, from netip.Addr, err error)
	WriteNHRP(b []byte, to netip.Addr) error
	SetNeighbor(ctx context.Context, n gre.Neighbor) error
	DeleteNeighbor(ctx context.Context, proto netip.Addr) error
	Neighbors(ctx context.Context) ([]gre.Neighbor, error)
	Misses() <-chan gre.Miss
	SetMulticast(nbma []netip.Addr) error
	ReplaceRoute(ctx context.Context, r gre.Route) error
	DeleteRoute(ctx context.Context, r gre.Route) error
}

// NeighborBatcher is implemented by tunnels that program many neighbour
// entries for the cost of one (gre.NeighborBatcher: the kernel data
// plane's one netlink round trip per batch); the engine's kernel writer
// hands them every queued neighbour change at once.
type NeighborBatcher interface {
	ApplyNeighbors(ctx context.Context, ops []gre.NeighborOp) []error
}

// RouteInfo is how an address is routed on this node.
type RouteInfo struct {
	// Prefix is the route that matched.
	Prefix netip.Prefix
	// Local means the address is in a network behind this node that the
	// node may answer resolutions for (not through the tunnel, not the
	// underlay): Prefix is then what a Resolution Reply advertises.
	Local bool
	// NextHop is the tunnel next hop when the route goes through the
	// tunnel; invalid otherwise.
	NextHop netip.Addr
}

// Router answers how an address is routed: the kernel's routing table in
// production, a fixed table in tests.
type Router interface {
	Route(ctx context.Context, dst netip.Addr) (RouteInfo, error)
}

// SourceRouter is a Router that also tells which local address the
// kernel uses toward a destination: this node's NBMA address toward a
// peer, when the tunnel knows no uplink address.
type SourceRouter interface {
	Router
	Source(ctx context.Context, dst netip.Addr) (netip.Addr, error)
}

// Verdict is the answer of an Authorizer.
type Verdict struct {
	// Code is the CIE code of the reply: 0 accepts; any other code refuses
	// (administratively prohibited is the usual one).
	Code uint8
	// Reason explains a refusal (logged, counted, shown).
	Reason string
	// Identity describes who the peer proved to be (a certificate subject),
	// and Attrs carries what the policy learned about it (AS, networks),
	// kept with the binding.
	Identity string
	Attrs    map[string][]string
	// Proven says the peer proved with the certificate of the SA the
	// registration came over that Proto is its own: a unique binding of
	// Proto at another NBMA address then moves to the new one (the node's
	// uplink failed over) instead of being refused with code 14.
	Proven bool
	// Networks are the networks the peer may advertise behind its tunnel
	// address (a certificate's OU=NET=); empty: no restriction. The engine
	// keeps them with a registration and checks the shortcuts it forwards
	// against them.
	Networks []netip.Prefix
}

// Registration is what an Authorizer decides on.
type Registration struct {
	// Proto is the tunnel address (or prefix) the spoke claims.
	Proto netip.Prefix
	// NBMA is the address the packet came from; ClaimedNBMA the one the
	// spoke wrote in it (they differ behind NAT).
	NBMA, ClaimedNBMA netip.Addr
	Unique            bool
	HoldingTime       uint16
}

// Authorizer decides on registrations. It may block (the engine calls it
// from its own goroutine per registration, with a deadline); registrations
// are processed concurrently.
type Authorizer interface {
	Authorize(ctx context.Context, r Registration) Verdict
}

// ImmediateAuthorizer is an Authorizer that decides some registrations at
// once, without blocking (a policy held in memory): the engine then answers
// them on its own goroutine instead of starting one per registration and
// decoding the packet again.
type ImmediateAuthorizer interface {
	Authorizer
	// AuthorizeNow decides r without blocking; ok is false when it cannot,
	// and Authorize decides.
	AuthorizeNow(r Registration) (v Verdict, ok bool)
}

// AuthorizerFunc adapts a function to an Authorizer.
type AuthorizerFunc func(ctx context.Context, r Registration) Verdict

// Authorize calls f.
func (f AuthorizerFunc) Authorize(ctx context.Context, r Registration) Verdict { return f(ctx, r) }

// Claim is what a packet asserts about a node: that the tunnel address
// Proto — and, for a shortcut, the network Prefix behind it — is reached
// at the NBMA address NBMA. The engine binds nothing for a claim that the
// identity of the peer at NBMA does not prove.
type Claim struct {
	NBMA  netip.Addr
	Proto netip.Addr
	// Prefix is the network a resolution reply advertises behind Proto;
	// invalid for a claim about the address alone.
	Prefix netip.Prefix
	// Packet names the packet that made the claim and From the NBMA
	// address it came from (they are audited with a refusal).
	Packet string
	From   netip.Addr
}

// Verifier checks claims against the identity the peer at Claim.NBMA
// proved: with IPsec, the certificate of its SA (OU=GRE= must be Proto,
// a Prefix must lie inside one of its OU=NET= when it has any). Without a
// Verifier the engine takes "registered from that NBMA address, or vouched
// for by one of its servers" as the proof. Verify may block (the engine
// calls it from a goroutine of its own, with a deadline, once the peer is
// up).
type Verifier interface {
	Verify(ctx context.Context, c Claim) Verdict
}

// VerifierFunc adapts a function to a Verifier.
type VerifierFunc func(ctx context.Context, c Claim) Verdict

// Verify calls f.
func (f VerifierFunc) Verify(ctx context.Context, c Claim) Verdict { return f(ctx, c) }

// ErrIdentity is wrapped by a PeerHandler's PeerUp error when the peer is
// up but its identity does not prove the tunnel address it is used for
// (a shortcut peer whose certificate names another address): the engine
// counts it as a refusal.
var ErrIdentity = errors.New("nhrp: peer identity does not prove its tunnel address")

// Peer is an NBMA peer: another node the engine exchanges packets with.
type Peer struct {
	NBMA netip.Addr
	// Proto is the peer's tunnel address when known.
	Proto netip.Addr
	// Role says why the peer is used: "nhs", "client" (a registered spoke)
	// or "shortcut".
	Role string
}

// PeerHandler brings peers up before they are used and learns when they
// are no longer needed: the IPsec bring-up and teardown point. PeerUp may
// block until the peer is usable (the SA is up), within the context's
// deadline; an error keeps packets from being sent to the peer.
type PeerHandler interface {
	PeerUp(ctx context.Context, p Peer) error
	PeerDown(p Peer, reason string)
}

// Observer receives the engine's events, in order, from the engine's
// goroutine. Implementations must not block: queue work elsewhere.
type Observer interface {
	Event(e Event)
}

// ObserverFunc adapts a function to an Observer.
type ObserverFunc func(e Event)

// Event calls f.
func (f ObserverFunc) Event(e Event) { f(e) }
