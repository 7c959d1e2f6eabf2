package bgp

import (
	"context"
	"net/netip"
	"time"
)

// Speaker runs the BGP sessions and tables: GoBGP in production (GoBGP),
// an in-memory fake in the controller's tests. The Controller is its only
// caller, from one goroutine.
type Speaker interface {
	// Start starts the speaker with the node's configuration: global
	// settings, the refusals every neighbour gets, phase 3 or 2 export
	// rules. notify receives what happened; it must not block.
	Start(ctx context.Context, cfg Config, notify func(SpeakerEvent)) error
	// Stop ends every session: with graceful, without a NOTIFICATION so
	// the neighbours keep the routes for the restart time.
	Stop(ctx context.Context, graceful bool) error
	// SetNeighbor adds a neighbour or changes one: a change of AS or kind
	// restarts the session, a change of networks only re-filters what it
	// sent.
	SetNeighbor(ctx context.Context, n Neighbor) error
	// DeleteNeighbor removes a neighbour and its routes.
	DeleteNeighbor(ctx context.Context, addr netip.Addr) error
	// ResetNeighbor restarts a session, or with soft asks for the routes
	// again and sends ours again.
	ResetNeighbor(ctx context.Context, addr netip.Addr, soft bool) error
	// SetOrigin makes the routes this node originates exactly these.
	SetOrigin(ctx context.Context, prefixes []netip.Prefix) error
	// Neighbors returns the sessions' state.
	Neighbors(ctx context.Context) ([]SessionState, error)
	// Routes returns the routes of a table.
	Routes(ctx context.Context, q RouteQuery) ([]Route, error)
	// Protect adds NBMA addresses learned at run time (a server named by
	// DNS, one that answered from another address) to those a prefix
	// covering is refused from every neighbour; what was accepted is
	// judged again.
	Protect(ctx context.Context, nbma []netip.Addr) error
}

// EventKind is what a SpeakerEvent reports.
type EventKind uint8

// Speaker event kinds.
const (
	// PeerState: a session changed state.
	PeerState EventKind = iota + 1
	// BestChanged: best paths changed (the kernel's routes follow).
	BestChanged
	// Received: a neighbour sent an UPDATE (its refusals are looked at).
	Received
)

// SpeakerEvent is something the speaker reports.
type SpeakerEvent struct {
	Kind EventKind
	Peer netip.Addr
	// State is the session state after a PeerState event, and Reason why
	// it went down.
	State  string
	Reason string
}

// Session states as GoBGP and vtysh name them.
const (
	StateIdle        = "idle"
	StateConnect     = "connect"
	StateActive      = "active"
	StateOpenSent    = "opensent"
	StateOpenConfirm = "openconfirm"
	StateEstablished = "established"
)

// SessionState is a neighbour's session as the speaker sees it.
type SessionState struct {
	Address netip.Addr `json:"address"`
	AS      uint32     `json:"as"`
	State   string     `json:"state"`
	// Since is when the session entered its state (up/down time).
	Since time.Time `json:"since,omitzero"`
	// Received counts the prefixes the neighbour sent, Accepted those the
	// import filter let in.
	Received int `json:"prefixes_received"`
	Accepted int `json:"prefixes_accepted"`
	// UpdatesIn and UpdatesOut count UPDATE messages; Flaps how often the
	// session left established.
	UpdatesIn  uint64 `json:"updates_in"`
	UpdatesOut uint64 `json:"updates_out"`
	Flaps      uint64 `json:"flaps"`
	// LastError is why the session last went down.
	LastError string `json:"last_error,omitempty"`
	// PrefixLimit is set while the session is held down for sending more
	// prefixes than allowed (until cleared).
	PrefixLimit bool `json:"prefix_limit,omitempty"`
}

// Table names a routing table of the speaker.
type Table uint8

// Tables.
const (
	// TableBest is the RIB: every path the filters accepted, best marked.
	TableBest Table = iota
	// TableReceived is what a neighbour sent, refused ones marked.
	TableReceived
	// TableAdvertised is what is sent to a neighbour.
	TableAdvertised
)

// RouteQuery selects routes.
type RouteQuery struct {
	Table Table
	// Neighbor is required for the received and advertised tables.
	Neighbor netip.Addr
	// Prefix, when valid, selects the routes of that prefix (exact) only;
	// Address, when valid, those of the longest prefix that contains it
	// (vtysh's `show ip bgp ADDRESS`).
	Prefix  netip.Prefix
	Address netip.Addr
}

// Route is one path to a prefix.
type Route struct {
	Prefix  netip.Prefix `json:"prefix"`
	NextHop netip.Addr   `json:"next_hop"`
	// Peer is the neighbour it came from; invalid for our own routes.
	Peer   netip.Addr `json:"peer,omitzero"`
	PeerAS uint32     `json:"peer_as,omitempty"`
	ASPath []uint32   `json:"as_path"`
	// ASSet is set when the AS path has a segment other than a plain
	// sequence (an AS_SET or a confederation segment), flattened in ASPath.
	ASSet  bool   `json:"as_set,omitempty"`
	Origin string `json:"origin"`
	MED    uint32 `json:"med,omitempty"`
	// LocalPref is set on iBGP paths.
	LocalPref uint32 `json:"local_pref,omitempty"`
	// Best is the best path; Multipath another path of equal rank used
	// alongside it.
	Best      bool `json:"best,omitempty"`
	Multipath bool `json:"multipath,omitempty"`
	// Stale is kept through a neighbour's graceful restart.
	Stale bool `json:"stale,omitempty"`
	// Refused is set in a received table for what the filter refused, with
	// why.
	Refused bool   `json:"refused,omitempty"`
	Why     string `json:"why,omitempty"`
	// Age is when the path was learned.
	Age time.Time `json:"age,omitzero"`
}

// Local reports whether the route is this node's own.
func (r Route) Local() bool { return !r.Peer.IsValid() }
