package nhrp

import (
	"net/netip"
	"slices"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/gre"
)

// mcastSet counts the registered and static entries per NBMA address for
// multicast dynamic, and remembers which addresses changed since the
// tunnel was last told, so that an update costs the changes, not the
// cache (a hub of 100,000 clients rebuilt and sorted the whole list every
// 100 ms while they registered).
type mcastSet struct {
	refs  map[netip.Addr]mcastRef
	dirty []netip.Addr
	// synced says the tunnel holds exactly the addresses marked inDev;
	// otherwise the next update sends the whole list.
	synced bool
}

// mcastRef is one address's count and whether the tunnel has it.
type mcastRef struct {
	n     int
	inDev bool
}

// ref counts an entry of nbma in (d = 1) or out (d = -1); the changes
// are kept for the tunnel only with track (multicast dynamic), otherwise
// the next dynamic update sends the whole list.
func (m *mcastSet) ref(nbma netip.Addr, d int, track bool) {
	if !nbma.IsValid() {
		return
	}
	if m.refs == nil {
		m.refs = make(map[netip.Addr]mcastRef)
	}
	r, ok := m.refs[nbma]
	if !ok && d < 0 {
		return
	}
	r.n = max(r.n+d, 0)
	if !track {
		m.synced, m.dirty = false, nil
		if r.n == 0 {
			delete(m.refs, nbma)
			return
		}
	}
	m.refs[nbma] = r
	if track && (r.n > 0) != r.inDev {
		m.dirty = append(m.dirty, nbma)
	}
}

// applyDynamicMulticast tells the tunnel what changed, or the whole list
// when it takes only that or is out of step.
func (e *Engine) applyDynamicMulticast() {
	m := &e.mcast
	up, incremental := e.tun.(gre.MulticastUpdater)
	if incremental && m.synced {
		var add, rm []netip.Addr
		for _, a := range m.dirty {
			r, ok := m.refs[a]
			switch {
			case !ok:
			case r.n > 0 && !r.inDev:
				add = append(add, a)
				r.inDev = true
				m.refs[a] = r
			case r.n == 0 && r.inDev:
				rm = append(rm, a)
				delete(m.refs, a)
			case r.n == 0:
				delete(m.refs, a)
			}
		}
		m.dirty = nil
		if len(add)+len(rm) == 0 {
			return
		}
		if err := up.UpdateMulticast(add, rm); err != nil {
			m.synced = false
			e.log.Warn("updating the multicast list", zap.Error(err))
		}
		return
	}
	list := make([]netip.Addr, 0, len(m.refs))
	for a, r := range m.refs {
		if r.n == 0 {
			delete(m.refs, a)
			continue
		}
		r.inDev = true
		m.refs[a] = r
		list = append(list, a)
	}
	m.dirty = nil
	slices.SortFunc(list, netip.Addr.Compare)
	if err := e.tun.SetMulticast(list); err != nil {
		e.log.Warn("setting the multicast list", zap.Error(err))
		return
	}
	m.synced = true
}
