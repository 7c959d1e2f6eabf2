package gre

import (
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
)

// MulticastUpdater is implemented by data planes that take changes to the
// multicast replication list, so that a hub with a hundred thousand
// clients does not rebuild and hand over the whole list each time a few
// register or go.
type MulticastUpdater interface {
	// UpdateMulticast adds and removes NBMA addresses (removals first;
	// adding one present or removing one absent is not an error).
	UpdateMulticast(add, remove []netip.Addr) error
}

// MulticastList is a data plane's multicast replication list: read
// without locks by the forwarding path (Load), replaced whole (Set) or
// changed (Update) by the control plane; a change copies the list once
// (copy on write) and costs nothing per entry otherwise.
type MulticastList struct {
	mu  sync.Mutex
	cur atomic.Pointer[[]netip.Addr]
	idx map[netip.Addr]int // position in *cur; nil until the first Update
}

// Load returns the current list; the caller must not modify it.
func (l *MulticastList) Load() []netip.Addr {
	if p := l.cur.Load(); p != nil {
		return *p
	}
	return nil
}

// Set replaces the list.
func (l *MulticastList) Set(nbma []netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := slices.Clone(nbma)
	l.cur.Store(&c)
	l.idx = nil
}

// Update removes then adds addresses.
func (l *MulticastList) Update(add, remove []netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	next := slices.Clone(l.Load())
	if l.idx == nil {
		next = slices.Compact(slices.SortedFunc(slices.Values(next), netip.Addr.Compare))
		l.idx = make(map[netip.Addr]int, len(next))
		for i, a := range next {
			l.idx[a] = i
		}
	}
	for _, a := range remove {
		i, ok := l.idx[a]
		if !ok {
			continue
		}
		last := next[len(next)-1]
		next[i] = last
		l.idx[last] = i
		next = next[:len(next)-1]
		delete(l.idx, a)
	}
	for _, a := range add {
		if _, ok := l.idx[a]; ok {
			continue
		}
		l.idx[a] = len(next)
		next = append(next, a)
	}
	l.cur.Store(&next)
}
