package nhrp

import (
	"net/netip"
	"time"
)

// EntryType is the type of a cache entry. Types are ranked: an entry is
// never replaced by one of a lower type.
type EntryType uint8

// Entry types, lowest rank first.
const (
	// TypeIncomplete: a resolution is in progress.
	TypeIncomplete EntryType = iota + 1
	// TypeNegative: a resolution failed; retried after a short time.
	TypeNegative
	// TypeCached: a binding learned from a resolution reply or request.
	TypeCached
	// TypeShortcut: a shortcut route: a prefix via a tunnel next hop.
	TypeShortcut
	// TypeDynamic: a client registration (hub).
	TypeDynamic
	// TypeNHS: a next hop server this node registers with.
	TypeNHS
	// TypeStatic: a configured binding.
	TypeStatic
	// TypeLocal: this node's own address or a network behind it.
	TypeLocal
)

var entryTypeNames = [...]string{
	TypeIncomplete: "incomplete", TypeNegative: "negative", TypeCached: "cached",
	TypeShortcut: "shortcut", TypeDynamic: "dynamic", TypeNHS: "nhs",
	TypeStatic: "static", TypeLocal: "local",
}

func (t EntryType) String() string {
	if int(t) < len(entryTypeNames) && entryTypeNames[t] != "" {
		return entryTypeNames[t]
	}
	return "unknown"
}

// MarshalText names the type in JSON.
func (t EntryType) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// Flags of a cache entry, as Cisco names them.
type Flags uint16

// Entry flags.
const (
	FlagUnique        Flags = 1 << iota // registered with the unique bit
	FlagRegistered                      // created by a registration
	FlagUsed                            // traffic went through it recently
	FlagRouter                          // the peer is a router (Q bit)
	FlagRIB                             // a shortcut route is installed
	FlagNHO                             // next-hop override (not used: routes are installed)
	FlagNAT                             // the peer is behind NAT
	FlagImplicit                        // learned from a packet's source, not asked for
	FlagAuthoritative                   // from an authoritative reply
)

var flagNames = []string{"unique", "registered", "used", "router", "rib", "nho", "nat", "implicit", "authoritative"}

// Names lists the flags set, in Cisco's order.
func (f Flags) Names() []string {
	var out []string
	for i, n := range flagNames {
		if f&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	return out
}

// CacheEntry is a snapshot of one cache entry.
type CacheEntry struct {
	Type  EntryType    `json:"type"`
	Proto netip.Prefix `json:"proto"`
	// NBMA is where packets for the entry go; ClaimedNBMA is the address
	// the peer claimed when it differs (NAT).
	NBMA        netip.Addr `json:"nbma,omitzero"`
	ClaimedNBMA netip.Addr `json:"claimed_nbma,omitzero"`
	// NextHop is the tunnel next hop of a shortcut route.
	NextHop netip.Addr `json:"next_hop,omitzero"`
	Flags   []string   `json:"flags,omitempty"`
	Created time.Time  `json:"created"`
	// Expires is zero for entries that do not expire.
	Expires     time.Time `json:"expires,omitzero"`
	HoldingTime int       `json:"holding_time,omitempty"`
	MTU         int       `json:"mtu,omitempty"`
	// PeerState is the state of the entry's NBMA peer: "up", "connecting",
	// "failed" or "" when the entry has none.
	PeerState string `json:"peer_state,omitempty"`
	// Identity and Attrs come from the Authorizer (hub).
	Identity string              `json:"identity,omitempty"`
	Attrs    map[string][]string `json:"attrs,omitempty"`
}

// NHSState is the state of a next hop server.
type NHSState uint8

// NHS states, as Cisco names them.
const (
	// NHSDown: not registered; a registration is scheduled.
	NHSDown NHSState = iota
	// NHSProbing: a registration is outstanding and no reply came yet.
	NHSProbing
	// NHSUp: registered.
	NHSUp
	// NHSStandby: not used because better servers are up (MaxNHS).
	NHSStandby
)

func (s NHSState) String() string {
	switch s {
	case NHSProbing:
		return "probing"
	case NHSUp:
		return "up"
	case NHSStandby:
		return "standby"
	}
	return "down"
}

// MarshalText names the state in JSON.
func (s NHSState) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// NHSStatus is a snapshot of one next hop server.
type NHSStatus struct {
	Proto    netip.Addr `json:"proto,omitzero"`
	NBMA     netip.Addr `json:"nbma"`
	Hostname string     `json:"hostname,omitempty"`
	Priority int        `json:"priority"`
	State    NHSState   `json:"state"`
	Since    time.Time  `json:"since"`
	// RequestID is the ID of the last registration sent.
	RequestID uint32    `json:"request_id"`
	Sent      uint64    `json:"requests_sent"`
	Replies   uint64    `json:"replies_received"`
	Failed    uint64    `json:"requests_failed"`
	LastReply time.Time `json:"last_reply,omitzero"`
	// Expires is when the current registration runs out.
	Expires time.Time `json:"expires,omitzero"`
	// LastError is the last refusal or failure.
	LastError string `json:"last_error,omitempty"`
	// PublicNBMA is this node's NBMA address as the server sees it (NAT).
	PublicNBMA netip.Addr `json:"public_nbma,omitzero"`
}

// Traffic counts NHRP packets by type and direction, errors and drops.
type Traffic struct {
	// Sent and Received by packet type name.
	Sent     map[string]uint64 `json:"sent"`
	Received map[string]uint64 `json:"received"`
	// ErrorsSent and ErrorsReceived count Error Indications by code name.
	ErrorsSent     map[string]uint64 `json:"errors_sent"`
	ErrorsReceived map[string]uint64 `json:"errors_received"`
	// Dropped counts received packets dropped, by reason.
	Dropped map[string]uint64 `json:"dropped"`
	// Suppressed counts packets the rate limits held back, by kind.
	Suppressed map[string]uint64 `json:"suppressed"`
	// Refused counts received packets refused because their sender's
	// identity does not prove what they claim, by check (Refusal names).
	Refused map[string]uint64 `json:"refused"`
	// Limited counts what the engine's limits (Config.Limits) refused or
	// evicted, by Limit name.
	Limited map[string]uint64 `json:"limited"`
	// MaxSend is the send limit per second and Usage the share of it used
	// in the last second, in percent.
	MaxSend int `json:"max_send"`
	Usage   int `json:"usage_percent"`
}

// ClearRequest selects cache entries to clear. Static and local entries
// are never cleared.
type ClearRequest struct {
	Dynamic  bool       // registrations (hub) and cached bindings
	Shortcut bool       // shortcut routes and their bindings
	Peer     netip.Addr // every entry of this tunnel or NBMA address
}
