package nhrp

import (
	"context"
	"net/netip"
	"time"

	"go.uber.org/zap"
)

// start sets up the state the configuration asks for: the local entry of
// the tunnel address, static bindings, next hop servers, the multicast
// list and the periodic checks.
func (e *Engine) start() {
	e.cache.put(&entry{typ: TypeLocal, proto: hostPrefix(e.own), created: e.now})
	e.applyStatic(nil, e.cfg.StaticMaps)
	e.restore()
	e.startNHS()
	e.updateMulticast()
	e.scheduleUsageScan()
	e.scheduleLocalCheck()
	e.log.Info("NHRP engine started", zap.Stringer("role", e.cfg.Role), zap.String("tunnel", e.info.Name),
		zap.Stringer("address", e.ownPfx), zap.Int("nhs", len(e.cfg.NHS)))
}

// applyStatic replaces the static bindings old by new.
func (e *Engine) applyStatic(old, new []StaticMap) {
	keep := make(map[StaticMap]bool, len(new))
	for _, m := range new {
		m.Proto = m.Proto.Masked()
		keep[m] = true
	}
	for _, m := range old {
		m.Proto = m.Proto.Masked()
		if keep[m] {
			continue
		}
		if en := e.cache.get(m.Proto); en != nil && en.typ == TypeStatic && en.nbma == m.NBMA {
			e.removeEntry(en, CauseConfig)
		}
	}
	for _, m := range new {
		p := m.Proto.Masked()
		if en := e.cache.get(p); en != nil {
			if en.typ == TypeStatic && en.nbma == m.NBMA {
				continue
			}
			if en.typ > TypeStatic {
				continue
			}
			e.removeEntry(en, CauseReplaced)
		}
		e.addEntry(&entry{typ: TypeStatic, proto: p, nbma: m.NBMA, created: e.now, flags: FlagRouter})
	}
}

// purgeGrace is how long the purges sent at shutdown get before the
// peers they travel over are released.
const purgeGrace = 300 * time.Millisecond

// shutdown runs on the loop when the engine stops: purges where the
// protocol calls for them, then the kernel state comes out (unless it is
// kept for a quick restart).
func (e *Engine) shutdown() {
	e.now = time.Now()
	// What a restart restores: the bindings as they are, before they
	// come out below.
	if e.deps.State != nil && e.restored {
		e.saveTimer.Stop()
		e.handSnapshot()
	}
	e.stopping = true
	purged := false
	if e.cfg.PurgeOnShutdown {
		purged = len(e.peers) > 0
		// A hub tells its clients their registrations are gone, so they
		// register again at once with the restarted hub.
		for _, en := range e.cache.all() {
			switch {
			case en.typ == TypeDynamic:
				e.sendPurge(en.nbma, en.proto.Addr(), []netip.Prefix{en.proto}, true)
			case en.typ == TypeLocal && len(en.told) > 0:
				e.withdrawLocal(en, "shutting down")
			}
		}
		for _, n := range e.nhs {
			if n.state == NHSUp {
				e.purgeOwnAt(n)
			}
		}
	}
	for _, n := range e.nhs {
		n.timer.Stop()
	}
	for _, en := range e.cache.all() {
		if en.typ == TypeLocal {
			continue
		}
		e.removeEntry(en, CauseShutdown)
	}
	if purged && e.deps.Peers != nil && len(e.peers) > 0 {
		// The purges are on their way through the peers' protection
		// (IPsec encrypts them after our send returns): releasing the
		// peers at once would tear the SAs down under them.
		time.Sleep(purgeGrace)
	}
	for _, p := range e.peers {
		e.releasePeer(p, "shutting down")
	}
	e.log.Info("NHRP engine stopped")
}

// subscriber receives events for the shell's live debugging.
type subscriber struct {
	ch      chan Event
	packets bool
	dropped uint64
}

// Subscribe returns a channel of events until cancel is called or the
// engine stops (the channel is then closed). With packets, every NHRP
// packet sent and received is an event too. A slow reader loses events
// rather than slowing the engine.
func (e *Engine) Subscribe(buffer int, packets bool) (<-chan Event, func()) {
	s := &subscriber{ch: make(chan Event, buffer), packets: packets}
	e.subMu.Lock()
	select {
	case <-e.done:
		e.subMu.Unlock()
		close(s.ch)
		return s.ch, func() {}
	default:
	}
	e.subs[s] = struct{}{}
	e.updateWantPackets()
	e.subMu.Unlock()
	cancel := func() {
		e.subMu.Lock()
		defer e.subMu.Unlock()
		if _, ok := e.subs[s]; ok {
			delete(e.subs, s)
			close(s.ch)
			e.updateWantPackets()
		}
	}
	return s.ch, cancel
}

// updateWantPackets must be called with subMu held.
func (e *Engine) updateWantPackets() {
	want := false
	for s := range e.subs {
		want = want || s.packets
	}
	e.wantPackets.Store(want)
}

// publish hands an event to the subscribers without blocking.
func (e *Engine) publish(ev Event) {
	e.subMu.Lock()
	defer e.subMu.Unlock()
	for s := range e.subs {
		if ev.Kind == EventPacket && !s.packets {
			continue
		}
		select {
		case s.ch <- ev:
		default:
			s.dropped++
		}
	}
}

// closeSubscribers ends every subscription when the engine stops.
func (e *Engine) closeSubscribers() {
	e.subMu.Lock()
	defer e.subMu.Unlock()
	for s := range e.subs {
		close(s.ch)
		delete(e.subs, s)
	}
}

// Done is closed when Run has returned.
func (e *Engine) Done() <-chan struct{} { return e.done }

// waitRunning waits until Run started, for tests and the daemon.
func (e *Engine) waitRunning(ctx context.Context) error {
	select {
	case <-e.running:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
