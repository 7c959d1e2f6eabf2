package failover

import (
	"context"
	"net/netip"
	"time"
)

// Link is what the kernel says of an uplink's interface.
type Link struct {
	// Index is the interface index; 0: the interface does not exist.
	Index int
	// Up: the interface is up and has carrier.
	Up bool
	// Addr is its first global IPv4 address with the connected prefix.
	Addr netip.Prefix
	// Gateway is the next hop of a default route through the interface
	// the kernel has (one not written by the uplinks, else theirs);
	// invalid when there is none.
	Gateway netip.Addr
}

// Kernel is what the monitor reads from the kernel.
type Kernel interface {
	// Link returns the state of an interface now.
	Link(ctx context.Context, ifname string) (Link, error)
	// Changes signals that links, addresses or routes changed (coalesced:
	// one signal may stand for many changes). It is never closed.
	Changes() <-chan struct{}
}

// Reply is an echo reply received through an uplink.
type Reply struct {
	Host netip.Addr
	Seq  uint16
	At   time.Time
}

// Prober sends echo requests through one uplink only: bound to its
// interface and source address, so a request never leaves through
// another uplink and a reply that comes back through another is not
// seen.
type Prober interface {
	// Send sends one echo request to host with sequence seq.
	Send(host netip.Addr, seq uint16) error
	// Close stops the prober; no reply is delivered after it returns.
	Close() error
}

// ProberFactory opens probers. deliver is called for every echo reply
// the prober receives (from the prober's own goroutine; it does not
// block).
type ProberFactory interface {
	Open(u Uplink, l Link, deliver func(Reply)) (Prober, error)
}

// ProberFactoryFunc adapts a function to a ProberFactory.
type ProberFactoryFunc func(u Uplink, l Link, deliver func(Reply)) (Prober, error)

// Open calls f.
func (f ProberFactoryFunc) Open(u Uplink, l Link, deliver func(Reply)) (Prober, error) {
	return f(u, l, deliver)
}

// Host makes the desired kernel state true: the uplinks' tables, rules,
// main-table default route and sysctls. It is the consumer's view of the
// host-state owner. SetUplinks replaces what an earlier call set.
type Host interface {
	SetUplinks(ctx context.Context, d Desired) error
}

// Conntrack ends the tracked connections of an uplink that left the main
// table, so their next packets start new connections through the uplinks
// that carry traffic now.
type Conntrack interface {
	// Flush deletes the connections translated to addr (masqueraded
	// through the uplink) and those carrying mark under mask. It returns
	// how many it deleted.
	Flush(ctx context.Context, addr netip.Addr, mark, mask uint32) (int, error)
}

// Observer receives the monitor's events from its goroutines; it must not
// block.
type Observer interface {
	// Transition: an uplink changed state.
	Transition(t Transition)
	// Applied: the kernel carries a new desired state; NBMA is this node's
	// NBMA address now (the active uplink's), Old the one before (equal
	// when it did not change).
	Applied(a Applied)
}

// Transition is an uplink's change of state.
type Transition struct {
	Time      time.Time
	Uplink    string
	Interface string
	From, To  State
	Reason    string
}

// Applied reports a desired state the kernel carries now.
type Applied struct {
	Time time.Time
	// Main lists the uplinks carrying the default route.
	Main []string
	// Old and NBMA are this node's NBMA address before and now.
	Old, NBMA netip.Addr
	// Flushed counts the connections ended because their uplink left.
	Flushed int
	Reason  string
}
