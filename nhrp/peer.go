package nhrp

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"go.uber.org/zap"
)

// peerState is the state of an NBMA peer.
type peerState uint8

const (
	peerIdle       peerState = iota // never brought up, or released
	peerConnecting                  // PeerUp running
	peerUp                          // usable
	peerFailed                      // PeerUp failed; retried on next use after a pause
)

func (s peerState) String() string {
	switch s {
	case peerConnecting:
		return "connecting"
	case peerUp:
		return "up"
	case peerFailed:
		return "failed"
	}
	return "idle"
}

// maxPeerQueue bounds the packets held for a peer being brought up.
const maxPeerQueue = 16

// peerRetry is how long a failed peer is left alone before the next use
// tries to bring it up again.
const peerRetry = 2 * time.Second

// peer is an NBMA peer.
type peer struct {
	nbma  netip.Addr
	proto netip.Addr
	role  string
	state peerState
	since time.Time
	// queue holds packets (and actions) waiting for the peer to come up.
	queue []waiter
	// refs counts cache entries and NHS clients that use the peer.
	refs int
	gen  uint64 // bumped on release, so a late PeerUp result is ignored
	// used is when the peer was last asked for; a peer no entry uses is
	// released once idle for peerIdleTime.
	used time.Time
}

// waiter is an action waiting for a peer: ok runs once it is up, fail
// (when set) if it cannot be brought up; identity says the PeerHandler
// refused the peer's identity (ErrIdentity).
type waiter struct {
	ok   func()
	fail func(reason string, identity bool)
}

// peerIdleTime is how long a peer that no cache entry or server uses (one
// that was only answered) is kept.
const peerIdleTime = 2 * time.Minute

// peer returns the peer for an NBMA address, creating it.
func (e *Engine) peer(nbma netip.Addr) *peer {
	p := e.peers[nbma]
	if p == nil {
		e.peerRoom()
		p = &peer{nbma: nbma, since: e.now}
		e.peers[nbma] = p
		e.peerIdx.ReplaceOrInsert(nbma)
		e.peerStates[peerIdle].Add(1)
		e.peerOrder = append(e.peerOrder, nbma)
	}
	return p
}

// whenUp runs f once the peer is up: at once if it is, after PeerUp
// otherwise. role and proto describe the peer to the PeerHandler.
func (e *Engine) whenUp(nbma netip.Addr, role string, proto netip.Addr, f func()) {
	e.whenUpOr(nbma, role, proto, f, nil)
}

// whenUpOr is whenUp with a failure path: fail runs (on the loop) when
// the peer cannot be brought up, or is refused, instead of ok.
func (e *Engine) whenUpOr(nbma netip.Addr, role string, proto netip.Addr, ok func(), fail func(reason string, identity bool)) {
	p := e.peer(nbma)
	p.used = e.now
	// The tunnel address the PeerHandler checks the peer's identity
	// against: the first user's, until the peer is up; a peer that is
	// not up (or failed) takes the latest, so a refused claim does not
	// stick to it.
	if proto.IsValid() && (!p.proto.IsValid() || p.state == peerIdle || p.state == peerFailed) {
		p.proto = proto
	}
	if p.role == "" || role == "nhs" || (p.role == "shortcut" && role == "client") {
		p.role = role
	}
	if e.deps.Peers == nil {
		if p.state != peerUp {
			e.setPeerState(p, peerUp)
		}
		ok()
		return
	}
	switch p.state {
	case peerUp:
		ok()
		return
	case peerFailed:
		if e.now.Sub(p.since) < peerRetry {
			e.stats.drop("peer-down")
			if fail != nil {
				fail("peer down", false)
			}
			return
		}
	}
	if len(p.queue) < maxPeerQueue {
		p.queue = append(p.queue, waiter{ok: ok, fail: fail})
	} else {
		e.stats.drop("peer-queue-full")
		if fail != nil {
			fail("peer queue full", false)
		}
	}
	if p.state == peerConnecting {
		return
	}
	e.setPeerState(p, peerConnecting)
	gen := p.gen
	info := Peer{NBMA: nbma, Proto: p.proto, Role: p.role}
	if !e.goHook(e.cfg.PeerUpTimeout, func(ctx context.Context) func() {
		err := e.deps.Peers.PeerUp(ctx, info)
		return func() { e.peerUpDone(nbma, gen, err) }
	}) {
		e.peerUpDone(nbma, gen, errHooksBusy)
	}
}

// peerUpDone handles the result of PeerUp on the loop.
func (e *Engine) peerUpDone(nbma netip.Addr, gen uint64, err error) {
	p := e.peers[nbma]
	if p == nil || p.gen != gen || p.state != peerConnecting {
		return
	}
	q := p.queue
	p.queue = nil
	if err != nil {
		e.setPeerState(p, peerFailed)
		identity := errors.Is(err, ErrIdentity)
		e.log.Info("peer could not be brought up", zap.Stringer("nbma", nbma), zap.String("role", p.role), zap.Error(err))
		e.emit(Event{Kind: EventPeerDown, NBMA: nbma, Reason: "up failed: " + err.Error()})
		for _, w := range q {
			if w.fail != nil {
				w.fail("peer up failed: "+err.Error(), identity)
			}
		}
		return
	}
	e.setPeerState(p, peerUp)
	e.emit(Event{Kind: EventPeerUp, NBMA: nbma, Proto: prefixOf(p.proto)})
	for _, w := range q {
		w.ok()
	}
}

// dropQueue fails whatever waits for a peer.
func dropQueue(p *peer, reason string) {
	q := p.queue
	p.queue = nil
	for _, w := range q {
		if w.fail != nil {
			w.fail(reason, false)
		}
	}
}

// sweepPeers releases the peers no cache entry or server uses once they
// have been idle for peerIdleTime (peers that were only answered, or whose
// binding was refused), so the peer table stays bounded.
func (e *Engine) sweepPeers() {
	for _, p := range e.peers {
		if p.refs == 0 && p.state != peerConnecting && e.now.Sub(p.used) > peerIdleTime {
			e.releasePeer(p, "idle")
		}
	}
}

// ref and unref count the users of a peer; the last unref releases it.
func (e *Engine) ref(nbma netip.Addr) {
	if nbma.IsValid() {
		e.peer(nbma).refs++
	}
}

func (e *Engine) unref(nbma netip.Addr, reason string) {
	p := e.peers[nbma]
	if p == nil {
		return
	}
	if p.refs > 0 {
		p.refs--
	}
	if p.refs == 0 {
		e.releasePeer(p, reason)
	}
}

// releasePeer tells the PeerHandler a peer is no longer needed.
func (e *Engine) releasePeer(p *peer, reason string) {
	wasUp := p.state == peerUp || p.state == peerConnecting
	delete(e.peers, p.nbma)
	e.peerIdx.Delete(p.nbma)
	e.peerStates[p.state].Add(-1)
	p.gen++
	dropQueue(p, "peer released: "+reason)
	if !wasUp {
		return
	}
	e.emit(Event{Kind: EventPeerDown, NBMA: p.nbma, Proto: prefixOf(p.proto), Reason: reason})
	if e.deps.Peers != nil {
		e.deps.Peers.PeerDown(Peer{NBMA: p.nbma, Proto: p.proto, Role: p.role}, reason)
	}
}

// setPeerState moves a peer to state s, keeping the counts by state.
func (e *Engine) setPeerState(p *peer, s peerState) {
	if e.peers[p.nbma] == p {
		e.peerStates[p.state].Add(-1)
		e.peerStates[s].Add(1)
	}
	p.state, p.since = s, e.now
}

// peerStateOf returns the state name of an NBMA peer for snapshots.
func (e *Engine) peerStateOf(nbma netip.Addr) string {
	if !nbma.IsValid() {
		return ""
	}
	if p := e.peers[nbma]; p != nil {
		return p.state.String()
	}
	return "idle"
}

// prefixOf returns the host prefix of a, or the zero prefix.
func prefixOf(a netip.Addr) netip.Prefix {
	if !a.IsValid() {
		return netip.Prefix{}
	}
	return hostPrefix(a)
}
