package nhrp

import (
	"context"
	"net/netip"
	"slices"
	"time"

	"go.uber.org/zap"
)

// NBMAChanged tells the engine this node's NBMA address moved from old to
// nbma (uplink failover), once the kernel routes through the new uplink
// and the protection set up from the old address is gone: every peer is
// brought up again on its next use (from the new address), every server
// is registered with at once, and the peers that learnt a binding of this
// node (its tunnel address or a network behind it) are purged, so they
// resolve it again and reach the new address. What this node resolved
// (its shortcuts and cached bindings) goes too: their SAs were set up
// from the old address, and a peer this node cannot reach first (behind
// NAT) would otherwise keep them dead until they expire; the ones in use
// are resolved again from the new address once a server has it.
func (e *Engine) NBMAChanged(ctx context.Context, old, nbma netip.Addr, reason string) error {
	return e.do(ctx, func() {
		e.now = time.Now()
		e.log.Info("local NBMA address moved", zap.Stringer("from", old), zap.Stringer("to", nbma), zap.String("reason", reason))
		for _, p := range e.peers {
			if p.state == peerIdle {
				continue
			}
			// A PeerUp in flight answers for the old address: its result
			// is ignored (gen) and what waited for it is dropped; the
			// registrations below bring the peer up afresh.
			e.setPeerState(p, peerIdle)
			p.gen++
			dropQueue(p, "local NBMA address moved")
		}
		e.reregisterAll("local NBMA address moved to " + nbma.String())
		mp := &movePurges{peers: map[netip.Addr]*movePurge{}}
		for _, en := range e.cache.all() {
			if en.typ == TypeShortcut || en.typ == TypeCached {
				e.removeEntry(en, CauseMoved)
				mp.again = append(mp.again, en)
			}
		}
		// The peers that learnt a binding of this node are purged of it
		// and of this node's tunnel address (their next hop toward it),
		// once a server has this node's new address: the peers resolve
		// again at once, through the servers.
		for _, en := range e.cache.all() {
			if en.typ != TypeLocal || len(en.told) == 0 {
				continue
			}
			for to, t := range en.told {
				proto := t.proto
				p := mp.peers[to]
				if p == nil {
					p = &movePurge{proto: proto, prefixes: []netip.Prefix{hostPrefix(e.own)}}
					mp.peers[to] = p
				}
				if !slices.Contains(p.prefixes, en.proto) {
					p.prefixes = append(p.prefixes, en.proto)
				}
			}
			en.told = nil
		}
		if e.movePurges != nil {
			e.movePurges.timer.Stop()
			for to, p := range e.movePurges.peers {
				if mp.peers[to] == nil {
					mp.peers[to] = p
				}
			}
			mp.again = append(e.movePurges.again, mp.again...)
		}
		if len(mp.peers) == 0 && len(mp.again) == 0 {
			e.movePurges = nil
			return
		}
		e.movePurges = mp
		mp.timer = e.sched.after(e.now, movePurgeWait, func() { e.flushMovePurges("no server answered yet") })
	})
}

// movePurgeWait is how long the purges of a move wait for a server to
// register this node at its new NBMA address.
const movePurgeWait = 2 * time.Second

// movePurges are the purges of an NBMA move, by peer, and the bindings
// this node resolved before it, to resolve again.
type movePurges struct {
	peers map[netip.Addr]*movePurge
	again []*entry
	timer *timer
}

type movePurge struct {
	proto    netip.Addr
	prefixes []netip.Prefix
}

// flushMovePurges sends the purges of an NBMA move, if any wait.
func (e *Engine) flushMovePurges(why string) {
	mp := e.movePurges
	if mp == nil {
		return
	}
	e.movePurges = nil
	mp.timer.Stop()
	for to, p := range mp.peers {
		e.sendPurge(to, p.proto, p.prefixes, false)
	}
	for _, en := range mp.again {
		if e.cache.get(en.proto) == nil {
			e.resolveAgain(en)
		}
	}
	e.log.Info("bindings of this node purged at the peers that learnt them", zap.Int("peers", len(mp.peers)),
		zap.Int("resolved_again", len(mp.again)), zap.String("when", why))
}

// moveBinding moves a client's unique binding to the NBMA address a
// registration proven by its certificate came from: the same client on
// another uplink. The entry stays (its identity, its creation time): the
// neighbour is programmed at the new address, the old peer released.
func (e *Engine) moveBinding(cur *entry, r *regCIE, reqID uint32) {
	old := cur.nbma
	e.log.Info("client moved to another NBMA address, proven by its certificate",
		zap.Stringer("proto", cur.proto), zap.Stringer("from", old), zap.Stringer("to", r.reg.NBMA), zap.String("identity", r.verdict.Identity))
	flags := FlagRegistered | FlagUnique
	if r.reg.ClaimedNBMA != r.reg.NBMA {
		flags |= FlagNAT
	}
	e.cache.setNBMA(cur, r.reg.NBMA)
	cur.claimed, cur.flags = r.reg.ClaimedNBMA, flags|cur.flags&FlagUsed
	cur.holding, cur.mtu, cur.reqID = uint16(r.holding/time.Second), r.mtu, reqID
	if r.verdict.Identity != "" {
		// As a refresh does (bind): the networks the certificate allows
		// now, which bound the resolution replies claimed for the client.
		cur.identity, cur.attrs, cur.nets = r.verdict.Identity, r.verdict.Attrs, r.verdict.Networks
	}
	e.ref(cur.nbma)
	if n, ok := neighborOf(cur); ok {
		e.whenUp(cur.nbma, roleOf(cur.typ), cur.proto.Addr(), func() {
			if e.cache.get(cur.proto) != cur || e.stopping || cur.nbma != n.NBMA {
				return
			}
			e.kern.setNeighbor(n)
			cur.neigh = true
		})
	}
	e.expireAt(cur, e.now.Add(r.holding))
	e.emit(Event{Kind: EventRegistered, Proto: cur.proto, NBMA: cur.nbma, ClaimedNBMA: cur.claimed,
		HoldingTime: r.holding, Identity: cur.identity, Attrs: cur.attrs, Reason: "moved from " + old.String()})
	e.updateMulticast()
	e.unref(old, "client moved to "+cur.nbma.String())
}

// freeUnique clears the unique flag of the bindings of a client at nbma
// whose protection went away (a hub): a registration from another address
// may then take them over. Its work is that address's entries (the owner
// index), not the cache's.
func (e *Engine) freeUnique(nbma netip.Addr, reason string) {
	for _, en := range e.cache.keyed(byNBMA, nbma) {
		if en.typ == TypeDynamic && en.nbma == nbma && en.flags&FlagUnique != 0 {
			en.flags &^= FlagUnique
			e.log.Info("unique binding freed: its SA is gone", zap.Stringer("proto", en.proto), zap.Stringer("nbma", nbma), zap.String("reason", reason))
		}
	}
}

// resolveAgain resolves a purged shortcut or resolved binding again at
// once when traffic was using it: its owner moved to another NBMA address
// (uplink failover) or withdrew it, and the traffic should not wait for
// the next redirect, which the hub rate-limits per pair, to learn where it
// is now. An idle one is left to be resolved on its next use.
func (e *Engine) resolveAgain(en *entry) {
	if en.typ != TypeShortcut && en.typ != TypeCached {
		return
	}
	last := en.used
	if en.created.After(last) {
		last = en.created
	}
	if e.now.Sub(last) > 2*e.scanInterval() {
		return
	}
	e.resolve(en.proto.Addr(), "purged while in use", nil)
}
