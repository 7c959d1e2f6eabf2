package nhrp

import (
	"context"
	"fmt"
	"net/netip"
	"time"
)

// PeerStatus is a snapshot of one NBMA peer: another node the engine
// exchanges packets with (a server, a registered client, a shortcut's
// far end).
type PeerStatus struct {
	NBMA netip.Addr `json:"nbma"`
	// Proto is the peer's tunnel address when known.
	Proto netip.Addr `json:"proto,omitzero"`
	// Role is why the peer is used: "nhs", "client", "static" or
	// "shortcut".
	Role string `json:"role"`
	// State is "idle", "connecting", "up" or "failed"; Since is when it
	// entered that state.
	State string    `json:"state"`
	Since time.Time `json:"since"`
	// Users counts the cache entries and servers that use the peer.
	Users int `json:"users"`
}

// Peers returns a snapshot of the NBMA peers, sorted by address. It only
// reads; the shell's `show dmvpn` and the peer metrics use it. Like
// CacheEach it reads listChunk peers per turn of the engine's goroutine:
// each peer is a consistent snapshot, the list as a whole is not one.
func (e *Engine) Peers(ctx context.Context) ([]PeerStatus, error) {
	var out []PeerStatus
	var from netip.Addr
	first := true
	for {
		n := len(out)
		err := e.do(ctx, func() {
			visit := func(a netip.Addr) bool {
				if !first && a == from {
					return true
				}
				p := e.peers[a]
				out = append(out, PeerStatus{
					NBMA: p.nbma, Proto: p.proto, Role: p.role,
					State: p.state.String(), Since: p.since, Users: p.refs,
				})
				return len(out)-n < listChunk
			}
			if first {
				e.peerIdx.Ascend(visit)
			} else {
				e.peerIdx.AscendGreaterOrEqual(from, visit)
			}
		})
		if err != nil || len(out)-n < listChunk {
			return out, err
		}
		from, first = out[len(out)-1].NBMA, false
	}
}

// UnmarshalText reads the name MarshalText writes (API clients decode
// snapshots with it).
func (t *EntryType) UnmarshalText(b []byte) error {
	for i, n := range entryTypeNames {
		if n != "" && n == string(b) {
			*t = EntryType(i)
			return nil
		}
	}
	return fmt.Errorf("nhrp: unknown entry type %q", b)
}

// UnmarshalText reads the name MarshalText writes.
func (s *NHSState) UnmarshalText(b []byte) error {
	for _, v := range []NHSState{NHSDown, NHSProbing, NHSUp, NHSStandby} {
		if v.String() == string(b) {
			*s = v
			return nil
		}
	}
	return fmt.Errorf("nhrp: unknown NHS state %q", b)
}

// UnmarshalText reads the name MarshalText writes.
func (k *EventKind) UnmarshalText(b []byte) error {
	for i, n := range eventNames {
		if n != "" && n == string(b) {
			*k = EventKind(i)
			return nil
		}
	}
	return fmt.Errorf("nhrp: unknown event kind %q", b)
}
