package nhrp

import (
	"fmt"
	"net/netip"
	"time"
)

// EventKind names an engine event.
type EventKind uint8

// Event kinds. The opennhrp-script events map onto them: peer-register is
// the Authorizer, peer-up/peer-down are the PeerHandler, and the rest are
// these.
const (
	// EventRegistered: a client's registration was accepted (hub). Sent on
	// the first registration and when its NBMA address changes, not on
	// refreshes.
	EventRegistered EventKind = iota + 1
	// EventRegistrationRefused: a registration was refused (hub).
	EventRegistrationRefused
	// EventExpired: a client's binding went away (hub): expired, purged
	// or cleared; Reason says which.
	EventExpired
	// EventNHSUp and EventNHSDown: this node's registration with a next
	// hop server succeeded or was lost (spoke).
	EventNHSUp
	EventNHSDown
	// EventShortcutUp and EventShortcutDown: a shortcut route was installed
	// or removed (spoke).
	EventShortcutUp
	EventShortcutDown
	// EventPeerUp and EventPeerDown: an NBMA peer was brought up (its
	// PeerUp returned) or released.
	EventPeerUp
	EventPeerDown
	// EventResolutionFailed: a resolution got a negative answer or none.
	EventResolutionFailed
	// EventPacket: an NHRP packet was sent or received (for live
	// debugging); Packet describes it.
	EventPacket
	// EventPacketRefused: a packet was refused because its sender's
	// identity does not prove what it claims (a forged source, a reply
	// to a request not sent to its sender, a purge of what the sender
	// does not own, …); Refusal names the check, Reason explains it,
	// NBMA is the sender, Proto the address or prefix claimed.
	EventPacketRefused
)

var eventNames = [...]string{
	EventRegistered: "registered", EventRegistrationRefused: "registration-refused",
	EventExpired: "expired", EventNHSUp: "nhs-up", EventNHSDown: "nhs-down",
	EventShortcutUp: "shortcut-up", EventShortcutDown: "shortcut-down",
	EventPeerUp: "peer-up", EventPeerDown: "peer-down",
	EventResolutionFailed: "resolution-failed", EventPacket: "packet",
	EventPacketRefused: "packet-refused",
}

func (k EventKind) String() string {
	if int(k) < len(eventNames) && eventNames[k] != "" {
		return eventNames[k]
	}
	return "event"
}

// MarshalText names the kind in JSON.
func (k EventKind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// Event is something that happened in the engine.
type Event struct {
	Kind EventKind `json:"kind"`
	Time time.Time `json:"time"`
	// Proto is the protocol address or prefix concerned: the client's
	// tunnel address, the shortcut prefix, the NHS address.
	Proto netip.Prefix `json:"proto,omitzero"`
	// NBMA is the peer's NBMA address (the one packets go to), and
	// ClaimedNBMA the one it claimed when different (NAT).
	NBMA        netip.Addr `json:"nbma,omitzero"`
	ClaimedNBMA netip.Addr `json:"claimed_nbma,omitzero"`
	// NextHop is a shortcut's tunnel next hop.
	NextHop netip.Addr `json:"next_hop,omitzero"`
	// Reason explains a refusal, an expiry or a down event.
	Reason string `json:"reason,omitempty"`
	// Cause is why a binding went away (EventExpired, EventShortcutDown)
	// or how it came (CauseRestored on an EventRegistered restored from
	// the state file at start).
	Cause Cause `json:"cause,omitempty"`
	// Refusal names the check an EventPacketRefused failed.
	Refusal Refusal `json:"refusal,omitempty"`
	// Code is the CIE code of a refusal.
	Code uint8 `json:"code,omitempty"`
	// Identity and Attrs are what the Authorizer learned about the peer.
	Identity string              `json:"identity,omitempty"`
	Attrs    map[string][]string `json:"attrs,omitempty"`
	// HoldingTime of a registration or shortcut.
	HoldingTime time.Duration `json:"holding_time,omitempty"`
	// Packet describes an EventPacket.
	Packet *PacketEvent `json:"packet,omitempty"`
}

// PacketEvent describes an NHRP packet sent or received.
type PacketEvent struct {
	// Dir is "in" or "out".
	Dir string `json:"dir"`
	// Peer is the NBMA address it came from or went to.
	Peer netip.Addr `json:"peer"`
	// Summary is a one-line decode.
	Summary string `json:"summary"`
	// Error is set for a received packet that was dropped.
	Error string `json:"error,omitempty"`
}

// Cause says why a binding went away, or how a registration came back.
type Cause uint8

// Causes.
const (
	CauseNone Cause = iota
	// CauseExpired: its holding time ran out.
	CauseExpired
	// CauseReplaced: a registration from another NBMA address, or a
	// binding of higher rank, took its place.
	CauseReplaced
	// CausePurged: its owner purged it.
	CausePurged
	// CauseCleared: an operator cleared it.
	CauseCleared
	// CauseShutdown: the engine stopped.
	CauseShutdown
	// CauseIdle: a shortcut carried no traffic for ShortcutIdle.
	CauseIdle
	// CauseConfig: the configuration no longer has it (a static
	// binding, a next hop server).
	CauseConfig
	// CauseRestored: a registration restored at start from the state a
	// previous run kept (on EventRegistered).
	CauseRestored
	// CauseRevoked: the certificate that proved it was revoked.
	CauseRevoked
	// CauseRefused: a restored registration the identity of its peer no
	// longer proves.
	CauseRefused
	// CauseRenewed: a refresh proved the same address with another
	// identity or other fields (a renewed certificate), on
	// EventRegistered.
	CauseRenewed
	// CauseProtectionLost: the SA of the peer it points to went away
	// (the peer is dead, or moved to another NBMA address).
	CauseProtectionLost
	// CauseMoved: this node's NBMA address moved (uplink failover); what
	// it resolved from the old address is resolved again.
	CauseMoved
	// CauseEvicted: the cache was full and a more important entry took
	// its place (Limits.MaxEntries).
	CauseEvicted
)

var causeNames = [...]string{
	CauseExpired: "expired", CauseReplaced: "replaced", CausePurged: "purged",
	CauseCleared: "cleared", CauseShutdown: "shutting down", CauseIdle: "idle",
	CauseConfig: "removed from the configuration", CauseRestored: "restored",
	CauseRevoked: "certificate revoked", CauseRefused: "no longer proven",
	CauseRenewed: "renewed", CauseProtectionLost: "peer's protection lost", CauseMoved: "local NBMA address moved",
	CauseEvicted: "evicted: cache full",
}

func (c Cause) String() string {
	if int(c) < len(causeNames) && causeNames[c] != "" {
		return causeNames[c]
	}
	return ""
}

// MarshalText names the cause in JSON.
func (c Cause) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// UnmarshalText reads the name MarshalText writes.
func (c *Cause) UnmarshalText(b []byte) error {
	for i, n := range causeNames {
		if n != "" && n == string(b) {
			*c = Cause(i)
			return nil
		}
	}
	if len(b) == 0 {
		*c = CauseNone
		return nil
	}
	return fmt.Errorf("nhrp: unknown cause %q", b)
}

// Refusal names an identity check a received packet failed. Each is
// counted in Traffic.Refused.
type Refusal uint8

// Refusals.
const (
	RefusalNone Refusal = iota
	// RefusedRequestSource: a Resolution Request whose source address is
	// not the one registered from (or proven by) the address it came
	// from, or whose source NBMA address is not the registered one.
	RefusedRequestSource
	// RefusedRequester: a requester's binding its identity does not
	// prove.
	RefusedRequester
	// RefusedReplyUnmatched: a reply that answers no request sent to (or
	// forwarded through) its sender.
	RefusedReplyUnmatched
	// RefusedReplyIdentity: a Resolution Reply whose responder address or
	// prefix the responder's identity does not prove.
	RefusedReplyIdentity
	// RefusedPurge: a Purge Request for what its sender does not own.
	RefusedPurge
	// RefusedTrafficIndication: a Traffic Indication from a node that is
	// not one of this node's servers.
	RefusedTrafficIndication
	// RefusedErrorIndication: an Error Indication about a request not
	// sent to its sender.
	RefusedErrorIndication
	numRefusals
)

var refusalNames = [numRefusals]string{
	RefusedRequestSource: "request-source", RefusedRequester: "requester-identity",
	RefusedReplyUnmatched: "reply-unmatched", RefusedReplyIdentity: "reply-identity",
	RefusedPurge: "purge-not-owner", RefusedTrafficIndication: "traffic-indication-not-server",
	RefusedErrorIndication: "error-indication-unmatched",
}

func (r Refusal) String() string {
	if r < numRefusals && refusalNames[r] != "" {
		return refusalNames[r]
	}
	return ""
}

// MarshalText names the refusal in JSON.
func (r Refusal) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText reads the name MarshalText writes.
func (r *Refusal) UnmarshalText(b []byte) error {
	for i, n := range refusalNames {
		if n != "" && n == string(b) {
			*r = Refusal(i)
			return nil
		}
	}
	if len(b) == 0 {
		*r = RefusalNone
		return nil
	}
	return fmt.Errorf("nhrp: unknown refusal %q", b)
}
