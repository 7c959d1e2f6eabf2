package userspace

import (
	"net/netip"
	"sync"
	"sync/atomic"
)

// neighTable maps tunnel next hops to neighbour entries. It is a
// sync.Map (Go's concurrent hash-trie): readers on the packet path never
// lock, and a change costs O(log n) whatever the table's size — the
// copy-on-write shards it replaced copied n/256 entries per change, which
// at 100,000 registering spokes was a third of the hub's time. Writers
// serialise on mu so that set's previous entry, the count and the
// generation stay consistent.
type neighTable struct {
	mu  sync.Mutex
	m   sync.Map      // netip.Addr → *neighbor
	gen atomic.Uint64 // bumped by every change
	n   atomic.Int64
}

// get returns the entry for a tunnel address, or nil.
func (t *neighTable) get(a netip.Addr) *neighbor {
	v, ok := t.m.Load(a)
	if !ok {
		return nil
	}
	return v.(*neighbor)
}

// generation changes whenever the table does.
func (t *neighTable) generation() uint64 { return t.gen.Load() }

// set adds or replaces an entry and returns the one it replaced.
func (t *neighTable) set(a netip.Addr, nb *neighbor) *neighbor {
	t.mu.Lock()
	defer t.mu.Unlock()
	prev, loaded := t.m.Swap(a, nb)
	if !loaded {
		t.n.Add(1)
	}
	t.gen.Add(1)
	if prev == nil {
		return nil
	}
	return prev.(*neighbor)
}

// del removes an entry and reports whether there was one.
func (t *neighTable) del(a netip.Addr) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.m.LoadAndDelete(a); !ok {
		return false
	}
	t.n.Add(-1)
	t.gen.Add(1)
	return true
}

// all returns every entry.
func (t *neighTable) all() []*neighbor {
	out := make([]*neighbor, 0, t.n.Load())
	t.m.Range(func(_, v any) bool {
		out = append(out, v.(*neighbor))
		return true
	})
	return out
}
