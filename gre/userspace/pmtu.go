package userspace

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// pmtuTable holds learnt path MTUs toward NBMA addresses (from ICMP
// "fragmentation needed" about our GRE packets, or local EMSGSIZE). Without
// an entry a packet that fits the tunnel MTU fits the path. Readers are
// lock-free; the table is replaced on every (rare) change.
type pmtuTable struct {
	mu sync.Mutex
	m  atomic.Pointer[map[netip.Addr]pmtuEntry]
}

type pmtuEntry struct {
	mtu     int
	expires time.Time
}

// get returns the path MTU toward dst, or 0 if none is known.
func (t *pmtuTable) get(dst netip.Addr, now time.Time) int {
	m := t.m.Load()
	if m == nil || len(*m) == 0 {
		return 0
	}
	e, ok := (*m)[dst]
	if !ok || now.After(e.expires) {
		return 0
	}
	return e.mtu
}

// set records a path MTU valid until expires.
func (t *pmtuTable) set(dst netip.Addr, mtu int, expires time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	nm := map[netip.Addr]pmtuEntry{}
	if old := t.m.Load(); old != nil {
		for k, v := range *old {
			nm[k] = v
		}
	}
	nm[dst] = pmtuEntry{mtu, expires}
	t.m.Store(&nm)
}

// expire removes outdated entries.
func (t *pmtuTable) expire(now time.Time) {
	old := t.m.Load()
	if old == nil || len(*old) == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	old = t.m.Load()
	nm := map[netip.Addr]pmtuEntry{}
	for k, v := range *old {
		if now.Before(v.expires) {
			nm[k] = v
		}
	}
	if len(nm) != len(*old) {
		t.m.Store(&nm)
	}
}
