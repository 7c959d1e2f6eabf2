package nhrp

import (
	"context"
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
	queue []func()
	// refs counts cache entries and NHS clients that use the peer.
	refs int
	gen  uint64 // bumped on release, so a late PeerUp result is ignored
}

// peer returns the peer for an NBMA address, creating it.
func (e *Engine) peer(nbma netip.Addr) *peer {
	p := e.peers[nbma]
	if p == nil {
		p = &peer{nbma: nbma, since: e.now}
		e.peers[nbma] = p
	}
	return p
}

// whenUp runs f once the peer is up: at once if it is, after PeerUp
// otherwise. role and proto describe the peer to the PeerHandler.
func (e *Engine) whenUp(nbma netip.Addr, role string, proto netip.Addr, f func()) {
	p := e.peer(nbma)
	if proto.IsValid() && !p.proto.IsValid() {
		p.proto = proto
	}
	if p.role == "" || role == "nhs" {
		p.role = role
	}
	if e.deps.Peers == nil {
		if p.state != peerUp {
			p.state, p.since = peerUp, e.now
		}
		f()
		return
	}
	switch p.state {
	case peerUp:
		f()
		return
	case peerFailed:
		if e.now.Sub(p.since) < peerRetry {
			e.stats.drop("peer-down")
			return
		}
	}
	if len(p.queue) < maxPeerQueue {
		p.queue = append(p.queue, f)
	} else {
		e.stats.drop("peer-queue-full")
	}
	if p.state == peerConnecting {
		return
	}
	p.state, p.since = peerConnecting, e.now
	gen := p.gen
	info := Peer{NBMA: nbma, Proto: p.proto, Role: p.role}
	e.goHook(e.cfg.PeerUpTimeout, func(ctx context.Context) func() {
		err := e.deps.Peers.PeerUp(ctx, info)
		return func() { e.peerUpDone(nbma, gen, err) }
	})
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
		p.state, p.since = peerFailed, e.now
		e.log.Info("peer could not be brought up", zap.Stringer("nbma", nbma), zap.String("role", p.role), zap.Error(err))
		e.emit(Event{Kind: EventPeerDown, NBMA: nbma, Reason: "up failed: " + err.Error()})
		return
	}
	p.state, p.since = peerUp, e.now
	e.emit(Event{Kind: EventPeerUp, NBMA: nbma, Proto: prefixOf(p.proto)})
	for _, f := range q {
		f()
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
	p.gen++
	if !wasUp {
		return
	}
	e.emit(Event{Kind: EventPeerDown, NBMA: p.nbma, Proto: prefixOf(p.proto), Reason: reason})
	if e.deps.Peers != nil {
		e.deps.Peers.PeerDown(Peer{NBMA: p.nbma, Proto: p.proto, Role: p.role}, reason)
	}
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
