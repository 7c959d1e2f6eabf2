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

// Peers returns a snapshot of the NBMA peers, sorted by address
// (PeersEach, collected). It only reads; the peer metrics use it.
func (e *Engine) Peers(ctx context.Context) ([]PeerStatus, error) {
	var out []PeerStatus
	err := e.PeersEach(ctx, func(c []PeerStatus) error {
		out = append(out, c...)
		return nil
	})
	return out, err
}

// PeersEach reads the NBMA peers in address order, listChunk per turn of
// the engine's goroutine, and calls fn with each chunk (off that
// goroutine) until fn fails or every peer is read: each peer is a
// consistent snapshot, the list as a whole is not one (like CacheEach).
// The shell's `show dmvpn` reads them so.
func (e *Engine) PeersEach(ctx context.Context, fn func([]PeerStatus) error) error {
	var from netip.Addr
	first := true
	for {
		var chunk []PeerStatus
		err := e.do(ctx, func() {
			chunk = make([]PeerStatus, 0, min(listChunk, len(e.peers)))
			visit := func(a netip.Addr) bool {
				if !first && a == from {
					return true
				}
				p := e.peers[a]
				chunk = append(chunk, PeerStatus{
					NBMA: p.nbma, Proto: p.proto, Role: p.role,
					State: p.state.String(), Since: p.since, Users: p.refs,
				})
				return len(chunk) < listChunk
			}
			if first {
				e.peerIdx.Ascend(visit)
			} else {
				e.peerIdx.AscendGreaterOrEqual(from, visit)
			}
		})
		if err != nil {
			return err
		}
		if len(chunk) > 0 {
			if err := fn(chunk); err != nil {
				return err
			}
		}
		if len(chunk) < listChunk {
			return nil
		}
		from, first = chunk[len(chunk)-1].NBMA, false
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
