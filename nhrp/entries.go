package nhrp

import (
	"time"

	"github.com/opendmvpn/dmvpn/gre"
)

// roleOf names the peer role of an entry type for the PeerHandler.
func roleOf(t EntryType) string {
	switch t {
	case TypeDynamic:
		return "client"
	case TypeNHS:
		return "nhs"
	case TypeStatic:
		return "static"
	}
	return "shortcut"
}

// addEntry puts an entry in the cache and programs the kernel for it: a
// neighbour entry once its peer is up, a shortcut route.
func (e *Engine) addEntry(en *entry) {
	e.cache.put(en)
	if kept(en) {
		e.stateChanged(en, true)
	}
	e.ref(en.nbma)
	if n, ok := neighborOf(en); ok {
		e.whenUp(en.nbma, roleOf(en.typ), en.proto.Addr(), func() {
			if e.cache.get(en.proto) != en || e.stopping {
				return // removed or replaced meanwhile
			}
			e.kern.setNeighbor(n)
			en.neigh = true
		})
	}
	if en.typ == TypeShortcut && en.nextHop.IsValid() {
		e.kern.setRoute(e.shortcutRoute(en))
		en.route = true
		en.flags |= FlagRIB
	}
	if en.typ == TypeDynamic || en.typ == TypeStatic {
		e.mcast.ref(en.nbma, 1, e.cfg.Multicast == MulticastDynamic)
		e.updateMulticast()
	}
}

// shortcutRoute is the kernel route of a shortcut entry.
func (e *Engine) shortcutRoute(en *entry) gre.Route {
	return gre.Route{Dst: en.proto, Via: en.nextHop, Table: e.cfg.ShortcutTable, Protocol: e.cfg.ShortcutProtocol}
}

// removeEntry takes an entry out of the cache and the kernel, releases its
// peer and emits the events that go with its type.
func (e *Engine) removeEntry(en *entry, cause Cause) {
	reason := cause.String()
	e.cache.del(en)
	if kept(en) {
		e.stateChanged(en, true)
	}
	en.expire.Stop()
	en.renew.Stop()
	keep := e.stopping && e.cfg.KeepKernelState
	if en.neigh && !keep {
		// Another entry of the same address may have replaced this one and
		// programmed its own neighbour; only delete if none did.
		if cur := e.cache.get(en.proto); cur == nil {
			e.kern.delNeighbor(en.proto.Addr())
		}
	}
	en.neigh = false
	if en.route && !keep {
		e.kern.delRoute(e.shortcutRoute(en))
	}
	switch en.typ {
	case TypeDynamic:
		e.emit(Event{Kind: EventExpired, Proto: en.proto, NBMA: en.nbma, ClaimedNBMA: en.claimed,
			Reason: reason, Cause: cause, Identity: en.identity, Attrs: en.attrs})
		e.mcast.ref(en.nbma, -1, e.cfg.Multicast == MulticastDynamic)
		e.updateMulticast()
	case TypeShortcut:
		if en.route {
			e.emit(Event{Kind: EventShortcutDown, Proto: en.proto, NextHop: en.nextHop, NBMA: en.nbma, Reason: reason, Cause: cause})
		}
	case TypeStatic:
		e.mcast.ref(en.nbma, -1, e.cfg.Multicast == MulticastDynamic)
		e.updateMulticast()
	}
	en.route = false
	e.unref(en.nbma, reason)
}

// expireAt arms an entry's expiry.
func (e *Engine) expireAt(en *entry, when time.Time) {
	en.expire.Stop()
	en.expires = when
	if kept(en) {
		e.stateChanged(en, false)
	}
	en.expire = e.sched.at(when, func() {
		if e.cache.get(en.proto) == en {
			e.removeEntry(en, CauseExpired)
		}
	})
}
