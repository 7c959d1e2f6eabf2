package nhrp

import (
	"net/netip"
	"time"

	"github.com/opendmvpn/dmvpn/gre"
)

// scheduleRenew arms the renewal of a resolved binding or shortcut at two
// thirds of its holding time: if traffic used it since it was installed or
// last renewed, it is resolved again; otherwise it runs out.
func (e *Engine) scheduleRenew(en *entry) {
	en.renew.Stop()
	since := e.now
	hold := time.Duration(en.holding) * time.Second
	en.renew = e.sched.after(e.now, hold*2/3, func() {
		if e.cache.get(en.proto) != en {
			return
		}
		if en.lastUsed().After(since) {
			e.resolve(en.proto.Addr(), "renew", en)
		}
	})
}

// lastUsed is when traffic last went through the entry: a shortcut's
// traffic uses its next hop's neighbour entry.
func (en *entry) lastUsed() time.Time { return en.used }

// scanInterval is how often neighbour usage is read.
func (e *Engine) scanInterval() time.Duration {
	d := 10 * time.Second
	if e.cfg.ShortcutIdle > 0 && e.cfg.ShortcutIdle/4 < d {
		d = e.cfg.ShortcutIdle / 4
	}
	if d < time.Second {
		d = time.Second
	}
	return d
}

// scheduleUsageScan reads neighbour usage periodically while there are
// resolved bindings or shortcuts, to renew the used ones and drop idle
// ones.
func (e *Engine) scheduleUsageScan() {
	e.sched.after(e.now, e.scanInterval(), func() {
		if e.stopping {
			return
		}
		if e.hasResolved() {
			e.kern.pollNeighbors(e.applyUsage)
		}
		e.scheduleUsageScan()
	})
}

func (e *Engine) hasResolved() bool {
	return e.cache.countOf(TypeCached)+e.cache.countOf(TypeShortcut) > 0
}

// applyUsage records neighbour usage on the entries and removes the ones
// idle for longer than ShortcutIdle.
func (e *Engine) applyUsage(ns []gre.Neighbor) {
	used := make(map[netip.Addr]time.Time, len(ns))
	for _, n := range ns {
		if !n.LastUsed.IsZero() {
			used[n.Proto] = n.LastUsed
		}
	}
	var idle []*entry
	for _, en := range e.cache.m {
		var key netip.Addr
		switch en.typ {
		case TypeCached:
			key = en.proto.Addr()
		case TypeShortcut:
			key = en.nextHop
		case TypeDynamic, TypeNHS, TypeStatic:
			if t, ok := used[en.proto.Addr()]; ok && e.now.Sub(t) < e.scanInterval()*2 {
				en.flags |= FlagUsed
			} else {
				en.flags &^= FlagUsed
			}
			continue
		default:
			continue
		}
		if t, ok := used[key]; ok && t.After(en.used) {
			en.used = t
		}
		if e.now.Sub(en.used) < e.scanInterval()*2 {
			en.flags |= FlagUsed
		} else {
			en.flags &^= FlagUsed
		}
		last := en.used
		if en.created.After(last) {
			last = en.created
		}
		if e.cfg.ShortcutIdle > 0 && e.now.Sub(last) > e.cfg.ShortcutIdle {
			idle = append(idle, en)
		}
	}
	for _, en := range idle {
		if e.cache.get(en.proto) == en {
			e.removeEntry(en, CauseIdle)
		}
	}
}
