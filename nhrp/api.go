package nhrp

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"time"

	"go.uber.org/zap"
)

// Status is a summary of the engine.
type Status struct {
	Role      string       `json:"role"`
	Interface string       `json:"interface"`
	Address   netip.Prefix `json:"address"`
	NBMA      netip.Addr   `json:"nbma,omitzero"`
	// PublicNBMA is this node's NBMA as its servers see it (NAT).
	PublicNBMA  netip.Addr `json:"public_nbma,omitzero"`
	HoldingTime int        `json:"holding_time"`
	Redirect    bool       `json:"redirect"`
	Shortcut    bool       `json:"shortcut"`
	Entries     int        `json:"entries"`
	Peers       int        `json:"peers"`
}

// Status returns a summary of the engine.
func (e *Engine) Status(ctx context.Context) (Status, error) {
	var s Status
	err := e.do(ctx, func() {
		s = Status{
			Role: e.cfg.Role.String(), Interface: e.info.Name, Address: e.ownPfx,
			NBMA: e.localNBMA(netip.Addr{}), PublicNBMA: e.publicNBMA(),
			HoldingTime: int(e.cfg.HoldingTime / time.Second),
			Redirect:    e.cfg.Redirect, Shortcut: e.cfg.Shortcut,
			Entries: len(e.cache.m), Peers: len(e.peers),
		}
	})
	return s, err
}

// listChunk is how many entries or peers a listing reads per turn of the
// engine's goroutine: a listing of 100,000 is 200 turns with packets and
// timers handled between them, never one long stall.
const listChunk = 500

// Cache returns a snapshot of the cache, sorted by address (CacheEach,
// collected).
func (e *Engine) Cache(ctx context.Context) ([]CacheEntry, error) {
	var out []CacheEntry
	err := e.CacheEach(ctx, func(c []CacheEntry) error {
		out = append(out, c...)
		return nil
	})
	return out, err
}

// CacheEach reads the cache in address order, listChunk entries per turn
// of the engine's goroutine, and calls fn with each chunk (off that
// goroutine) until fn fails or the cache is read. Each entry is a
// consistent snapshot; the listing as a whole is not one: an entry added
// or removed while it runs may be missing from it or listed.
func (e *Engine) CacheEach(ctx context.Context, fn func([]CacheEntry) error) error {
	var from netip.Prefix
	first := true
	for {
		var chunk []CacheEntry
		err := e.do(ctx, func() {
			ens := e.cache.after(from, first, listChunk)
			chunk = make([]CacheEntry, 0, len(ens))
			for _, en := range ens {
				chunk = append(chunk, en.snapshot(e.peerStateOf(en.nbma)))
			}
		})
		if err != nil {
			return err
		}
		if len(chunk) == 0 {
			return nil
		}
		if err := fn(chunk); err != nil {
			return err
		}
		if len(chunk) < listChunk {
			return nil
		}
		from, first = chunk[len(chunk)-1].Proto, false
	}
}

// NHS returns the state of the next hop servers, preferred first.
func (e *Engine) NHS(ctx context.Context) ([]NHSStatus, error) {
	var out []NHSStatus
	err := e.do(ctx, func() {
		for _, n := range e.nhs {
			out = append(out, NHSStatus{
				Proto: n.proto, NBMA: n.nbma, Hostname: n.host, Priority: n.cfg.Priority,
				State: n.state, Since: n.since, RequestID: n.lastReqID, Sent: n.sent,
				Replies: n.replies, Failed: n.failed, LastReply: n.lastReply,
				Expires: n.expires, LastError: n.lastErr, PublicNBMA: n.public,
			})
		}
		slices.SortStableFunc(out, func(a, b NHSStatus) int { return a.Priority - b.Priority })
	})
	return out, err
}

// Traffic returns the packet counters.
func (e *Engine) Traffic(ctx context.Context) (Traffic, error) {
	var t Traffic
	err := e.do(ctx, func() { t = e.stats.snapshot(&e.limits, e.now) })
	return t, err
}

// Clear removes cache entries and returns how many. Static and local
// entries are never cleared. Clearing a client's registration on a hub
// also tells the client (a Purge Request), so it registers again.
func (e *Engine) Clear(ctx context.Context, r ClearRequest) (int, error) {
	if !r.Dynamic && !r.Shortcut && !r.Peer.IsValid() {
		return 0, errors.New("nhrp: nothing selected to clear")
	}
	n := 0
	err := e.do(ctx, func() {
		e.now = time.Now()
		for _, en := range e.cache.all() {
			if e.cache.get(en.proto) != en {
				continue // removed along with another
			}
			match := false
			switch en.typ {
			case TypeDynamic, TypeCached, TypeNegative, TypeIncomplete:
				match = r.Dynamic
			case TypeShortcut:
				match = r.Shortcut || r.Dynamic
			}
			if r.Peer.IsValid() && en.typ < TypeNHS {
				match = match || en.proto.Contains(r.Peer) || en.nbma == r.Peer || en.nextHop == r.Peer
			}
			if !match {
				continue
			}
			if en.typ == TypeDynamic {
				e.sendPurge(en.nbma, en.proto.Addr(), []netip.Prefix{en.proto}, true)
			}
			if en.typ == TypeShortcut || en.typ == TypeCached {
				e.limits.forgetRedirect(en.proto, e.now)
			}
			e.removeEntry(en, CauseCleared)
			n++
		}
		for _, rs := range e.resolves {
			if r.Dynamic || r.Shortcut || rs.target == r.Peer {
				e.endResolution(rs)
			}
		}
	})
	return n, err
}

// PeerLost tells the engine a peer's protection went away (its IPsec SA
// was deleted): the next use brings it up again, a lost server is
// registered with again at once rather than at the next refresh, and a
// hub frees the unique bindings of a client at that address (another
// address may take them over). The shortcuts and bindings this node
// resolved at that address go (traffic takes the routed path at once) and
// the ones in use are resolved again: the peer may have moved to another
// NBMA address and been unable to tell this node (its old uplink dead, or
// this node behind NAT, which it cannot reach first).
func (e *Engine) PeerLost(ctx context.Context, nbma netip.Addr, reason string) error {
	return e.do(ctx, func() {
		e.now = time.Now()
		if p := e.peers[nbma]; p != nil && p.state != peerConnecting {
			e.setPeerState(p, peerIdle)
			p.gen++
			var again []*entry
			// The peer's entries only (the owner index): an SA going
			// down costs its own entries, not a walk of the cache.
			for _, en := range e.cache.keyed(byNBMA, nbma) {
				if en.typ == TypeShortcut || en.typ == TypeCached {
					e.removeEntry(en, CauseProtectionLost)
					again = append(again, en)
				}
			}
			for _, en := range again {
				e.resolveAgain(en)
			}
		}
		e.freeUnique(nbma, reason)
		n := e.nhsByNBMA(nbma)
		switch {
		case n == nil || !(n.active || n.unreachable):
		case n.refused:
			e.log.Debug("next hop server lost its protection after refusing us; next attempt after the backoff", zap.Stringer("nhs", nbma))
		case len(n.reqIDs) > 0 && e.now.Sub(n.lastSent) < peerLostHoldDown:
			// A request went out just now and waits for its reply (its
			// retry is armed): an SA that keeps going away must not turn
			// into a stream of registrations.
			e.log.Debug("next hop server lost its protection again; the pending request's retry stands", zap.Stringer("nhs", nbma))
		default:
			e.log.Info("next hop server lost its protection, registering again", zap.Stringer("nhs", nbma), zap.String("reason", reason))
			n.failures, n.attempt = 0, 0
			e.register(n)
		}
	})
}

// peerLostHoldDown is how soon after an unanswered registration a lost SA
// may send another at once.
const peerLostHoldDown = time.Second

// Reregister sends registrations to every server at once: the local NBMA
// address changed (uplink failover) or IPsec was restarted.
func (e *Engine) Reregister(ctx context.Context, reason string) error {
	return e.do(ctx, func() {
		e.now = time.Now()
		for _, p := range e.peers {
			if p.state == peerFailed {
				e.setPeerState(p, peerIdle)
			}
		}
		e.reregisterAll(reason)
	})
}

// Reconfigure applies a new configuration: servers, static bindings,
// timers, switches. What did not change is left alone; registrations with
// servers that stay are not disturbed.
func (e *Engine) Reconfigure(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	return e.do(ctx, func() {
		e.now = time.Now()
		old := e.cfg
		e.cfg = cfg.withDefaults()
		e.limits.maxSend = e.cfg.MaxSend
		e.applyStatic(old.StaticMaps, e.cfg.StaticMaps)
		// Servers: remove the ones gone, add the new ones.
		want := map[string]NHSConfig{}
		for _, c := range e.cfg.NHS {
			want[c.String()] = c
		}
		for _, n := range slices.Clone(e.nhs) {
			c := n.cfg
			if _, ok := want[c.String()]; !ok {
				if n.host != "" {
					delete(e.dns, n.host)
				}
				e.removeNHS(n, "removed from the configuration")
			}
		}
		for name, d := range e.dns {
			if _, ok := want[d.cfg.String()]; !ok {
				d.timer.Stop()
				delete(e.dns, name)
			}
		}
		have := map[string]bool{}
		for _, n := range e.nhs {
			have[n.cfg.String()] = true
		}
		for _, d := range e.dns {
			have[d.cfg.String()] = true
		}
		for _, c := range e.cfg.NHS {
			if have[c.String()] {
				continue
			}
			if c.Hostname != "" {
				e.addDNSName(c)
			} else {
				e.addNHS(c, c.NBMA, "")
			}
		}
		for _, n := range e.nhs {
			for _, c := range e.cfg.NHS {
				if c.String() == n.cfg.String() || (n.host != "" && c.Hostname == n.host) {
					n.cfg.Priority = c.Priority
				}
			}
		}
		e.selectNHS()
		holdChanged := old.HoldingTime != e.cfg.HoldingTime || old.NoUnique != e.cfg.NoUnique ||
			string(old.AuthPassword) != string(e.cfg.AuthPassword)
		if holdChanged {
			e.reregisterAll("configuration changed")
		}
		e.updateMulticast()
	})
}

// Revoke ends what the peer at an NBMA address holds: its registrations
// (hub), the bindings and shortcuts that lead to it, and this node's
// registration with it when it is a server, which is then tried again
// only after the backoff. The IPsec layer calls it when a CRL revoked the
// peer's certificate (and ended its SAs). It returns how many entries
// went.
func (e *Engine) Revoke(ctx context.Context, nbma netip.Addr, reason string) (int, error) {
	n := 0
	err := e.do(ctx, func() {
		e.now = time.Now()
		for _, en := range e.cache.keyed(byNBMA, nbma) {
			if e.cache.get(en.proto) != en {
				continue
			}
			switch en.typ {
			case TypeDynamic, TypeCached, TypeShortcut:
				e.removeEntry(en, CauseRevoked)
				n++
			}
		}
		if s := e.nhsByNBMA(nbma); s != nil && !s.removed {
			e.registrationFailed(s, reason, true)
		}
		if p := e.peers[nbma]; p != nil && p.refs == 0 {
			e.releasePeer(p, reason)
		}
		e.log.Warn("peer revoked: its registrations and bindings ended", zap.Stringer("nbma", nbma), zap.Int("entries", n), zap.String("reason", reason))
	})
	return n, err
}
