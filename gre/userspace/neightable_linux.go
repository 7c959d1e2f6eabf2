package userspace

import (
	"net/netip"
	"sync"
	"sync/atomic"
)

// neighShards is the number of shards of the neighbour table. A hub holds
// an entry per registered spoke; copy-on-write per shard keeps lookups
// lock-free while an update copies only its shard (n/256 entries), not the
// whole table.
const neighShards = 256

// neighTable maps tunnel next hops to neighbour entries. Readers (the
// packet path) never lock; writers serialise on mu and replace one shard.
type neighTable struct {
	mu     sync.Mutex
	shards [neighShards]atomic.Pointer[map[netip.Addr]*neighbor]
	gen    atomic.Uint64 // bumped by every change
	n      atomic.Int64
}

func shardOf(a netip.Addr) int {
	b := a.As16()
	return int(b[15] ^ b[14]*7 ^ b[13]*13 ^ b[11]*31)
}

// get returns the entry for a tunnel address, or nil.
func (t *neighTable) get(a netip.Addr) *neighbor {
	m := t.shards[shardOf(a)].Load()
	if m == nil {
		return nil
	}
	return (*m)[a]
}

// generation changes whenever the table does.
func (t *neighTable) generation() uint64 { return t.gen.Load() }

// set adds or replaces an entry and returns the one it replaced.
func (t *neighTable) set(a netip.Addr, nb *neighbor) *neighbor {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := &t.shards[shardOf(a)]
	var old map[netip.Addr]*neighbor
	if p := s.Load(); p != nil {
		old = *p
	}
	m := make(map[netip.Addr]*neighbor, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	prev := old[a]
	m[a] = nb
	s.Store(&m)
	if prev == nil {
		t.n.Add(1)
	}
	t.gen.Add(1)
	return prev
}

// del removes an entry and reports whether there was one.
func (t *neighTable) del(a netip.Addr) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := &t.shards[shardOf(a)]
	p := s.Load()
	if p == nil {
		return false
	}
	if _, ok := (*p)[a]; !ok {
		return false
	}
	m := make(map[netip.Addr]*neighbor, len(*p))
	for k, v := range *p {
		if k != a {
			m[k] = v
		}
	}
	s.Store(&m)
	t.n.Add(-1)
	t.gen.Add(1)
	return true
}

// all returns every entry.
func (t *neighTable) all() []*neighbor {
	out := make([]*neighbor, 0, t.n.Load())
	for i := range t.shards {
		if p := t.shards[i].Load(); p != nil {
			for _, nb := range *p {
				out = append(out, nb)
			}
		}
	}
	return out
}
