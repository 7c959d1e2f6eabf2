package nhrp

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// errHooksBusy is the failure of a hook call not started because
// Limits.MaxHooks run.
var errHooksBusy = errors.New("too many hook calls in flight")

// Limits bound the state an engine keeps and the work a sender can make it
// do. A zero field takes its default, sized for a hub of 100,000 spokes.
type Limits struct {
	// MaxEntries bounds the cache. When it is full, incomplete and
	// negative entries are evicted first, then resolved bindings and
	// shortcuts, oldest first; registrations are never evicted: one beyond
	// the limit is refused with code 5 (insufficient resources).
	MaxEntries int
	// MaxPeers bounds the NBMA peers: beyond it, the oldest peer no entry
	// or server uses (a source that was only answered) is released for a
	// new one. Peers in use are bounded by the cache.
	MaxPeers int
	// MaxPending bounds each kind of request in flight: resolutions this
	// node started, Resolution Requests forwarded, registrations being
	// authorised, identities being verified.
	MaxPending int
	// SourceRate (packets a second) and SourceBurst are the token bucket
	// of each NBMA source; next hop servers and static peers are exempt.
	SourceRate  float64
	SourceBurst int
	// MaxSources bounds the sources the rate limit tracks; a source whose
	// bucket is full again is forgotten first. New sources beyond it share
	// one bucket of 16 times a source's rate.
	MaxSources int
	// MaxCIEs refuses a packet with more CIEs (in its body and its
	// extensions together) whole, before any per-CIE work.
	MaxCIEs int
	// MaxHooks bounds the hook calls (authorisation, verification, peer
	// bring-up, DNS) running at once.
	MaxHooks int
}

// Default limits.
const (
	DefaultMaxEntries  = 262144
	DefaultMaxPeers    = 131072
	DefaultMaxPending  = 16384
	DefaultSourceRate  = 100
	DefaultSourceBurst = 200
	DefaultMaxSources  = 65536
	DefaultMaxCIEs     = 64
	DefaultMaxHooks    = 1024
)

func (l Limits) withDefaults() Limits {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&l.MaxEntries, DefaultMaxEntries)
	def(&l.MaxPeers, DefaultMaxPeers)
	def(&l.MaxPending, DefaultMaxPending)
	def(&l.SourceBurst, DefaultSourceBurst)
	def(&l.MaxSources, DefaultMaxSources)
	def(&l.MaxCIEs, DefaultMaxCIEs)
	def(&l.MaxHooks, DefaultMaxHooks)
	if l.SourceRate == 0 {
		l.SourceRate = DefaultSourceRate
	}
	return l
}

// validate reports negative limits.
func (l Limits) validate(bad func(string, ...any)) {
	for _, f := range []struct {
		name string
		v    int
	}{{"max_entries", l.MaxEntries}, {"max_peers", l.MaxPeers}, {"max_pending", l.MaxPending},
		{"source_burst", l.SourceBurst}, {"max_sources", l.MaxSources}, {"max_cies", l.MaxCIEs}, {"max_hooks", l.MaxHooks}} {
		if f.v < 0 {
			bad("limit %s is negative (%d)", f.name, f.v)
		}
	}
	if l.SourceRate < 0 {
		bad("limit source_rate is negative (%v)", l.SourceRate)
	}
}

// Limit is what a limit refused or evicted, counted in Traffic.Limited.
type Limit uint8

// Limits counted.
const (
	// LimitCacheFull: a new entry refused (a registration answered with
	// code 5) because the cache is full of entries that are not evicted.
	LimitCacheFull Limit = iota
	// LimitEvicted: an entry evicted to make room for another.
	LimitEvicted
	// LimitPeers: an unused peer released early because MaxPeers peers
	// are kept.
	LimitPeers
	// LimitPending: a request not started or forgotten because MaxPending
	// of its kind are in flight.
	LimitPending
	// LimitRate: a packet dropped by its source's rate limit.
	LimitRate
	// LimitSources: a packet from a source the rate limit could not track
	// (MaxSources busy), counted against the shared bucket.
	LimitSources
	// LimitCIEs: a packet refused whole for carrying more than MaxCIEs.
	LimitCIEs
	// LimitHooks: a hook call not started because MaxHooks run.
	LimitHooks
	// LimitTold: a requester forgotten by a local entry that remembers
	// maxTold (or MaxPeers) of them.
	LimitTold
	numLimits
)

var limitNames = [numLimits]string{
	LimitCacheFull: "cache-full", LimitEvicted: "evicted", LimitPeers: "peers-full",
	LimitPending: "pending-full", LimitRate: "rate-limited", LimitSources: "sources-full",
	LimitCIEs: "too-many-cies", LimitHooks: "hooks-full",
	LimitTold: "told-full",
}

func (l Limit) String() string {
	if l < numLimits {
		return limitNames[l]
	}
	return fmt.Sprintf("limit-%d", uint8(l))
}

// LimitNames lists the names Traffic.Limited counts by.
func LimitNames() []string { return limitNames[:] }

// limited counts what a limit refused.
func (e *Engine) limited(l Limit) { e.stats.limited[l].Add(1) }

// sourceLimiter is the per-source token bucket of received packets
// (loop-owned).
type sourceLimiter = keyLimiter[netip.Addr]

// keyLimiter is a token bucket per key in a bounded table: a key whose
// bucket is full again is forgotten first (such a bucket is the same as a
// new one); new keys beyond busy ones share one overflow bucket.
type keyLimiter[K comparable] struct {
	m        map[K]bucket // by value: no allocation per key
	order    []K          // insertion order, for eviction
	overflow bucket
}

// evictTries bounds the work of one eviction: entries still busy are put
// back at the end of the order.
const evictTries = 8

// allow takes a token from the bucket of from (rate tokens a second, up
// to burst, at most max sources tracked); the second result says the
// source could not be tracked (the shared bucket was used).
func (s *keyLimiter[K]) allow(now time.Time, from K, rate, burst float64, max int) (ok, untracked bool) {
	if s.m == nil {
		s.m = make(map[K]bucket)
	}
	b, known := s.m[from]
	if !known {
		// Two of the oldest keys whose buckets are full again are
		// forgotten for each new one: the table holds the keys that
		// sent lately (at 100 packets a second, a key that sent one
		// packet is forgotten 10 ms later), not every source that ever
		// sent (100,000 spokes' registrations were 12 MB kept).
		s.evict(now, rate, burst, 1)
		s.evict(now, rate, burst, 1)
		if len(s.m) >= max {
			s.evict(now, rate, burst, evictTries)
		}
		if len(s.m) >= max {
			return s.overflow.allow(now, 16*rate, 16*burst), true
		}
		s.order = append(s.order, from)
	}
	ok = b.allow(now, rate, burst)
	s.m[from] = b
	return ok, false
}

// reset makes a key's bucket full again, if it is tracked.
func (s *keyLimiter[K]) reset(k K) {
	if _, ok := s.m[k]; ok {
		s.m[k] = bucket{}
	}
}

// evict forgets one source whose bucket is full again, if one of the
// tries oldest is.
func (s *keyLimiter[K]) evict(now time.Time, rate, burst float64, tries int) {
	for range tries {
		if len(s.order) == 0 {
			return
		}
		k := s.order[0]
		s.order = s.order[1:]
		b, ok := s.m[k]
		if !ok {
			continue
		}
		if b.tokens+now.Sub(b.last).Seconds()*rate >= burst {
			delete(s.m, k)
			return
		}
		s.order = append(s.order, k)
	}
}

// admit applies the per-source rate limit and the CIE limit to a received
// packet; false: the packet is dropped (counted).
func (e *Engine) admit(from netip.Addr) bool {
	lim := &e.cfg.Limits
	if e.trusted(from) {
		return true
	}
	ok, untracked := e.srcLimit.allow(e.now, from, lim.SourceRate, float64(lim.SourceBurst), lim.MaxSources)
	if untracked {
		e.limited(LimitSources)
	}
	if !ok {
		e.limited(LimitRate)
		e.stats.drop("rate-limited")
	}
	return ok
}

// roomFor makes room in the cache for a new entry of type t: true when
// there is (an entry of a lower or equal evictable class may be evicted),
// false when the cache is full (counted).
func (e *Engine) roomFor(t EntryType) bool {
	if len(e.cache.m) < e.cfg.Limits.MaxEntries {
		return true
	}
	if en := e.cache.evictable(t); en != nil {
		e.limited(LimitEvicted)
		e.removeEntry(en, CauseEvicted)
		return true
	}
	e.limited(LimitCacheFull)
	return false
}

// peerRoom releases the oldest peer no entry or server uses, if
// MaxPeers are kept.
func (e *Engine) peerRoom() {
	if len(e.peers) < e.cfg.Limits.MaxPeers {
		return
	}
	for range evictTries {
		if len(e.peerOrder) == 0 {
			return
		}
		k := e.peerOrder[0]
		e.peerOrder = e.peerOrder[1:]
		p := e.peers[k]
		if p == nil {
			continue
		}
		switch {
		case p.refs > 0:
			// Used by an entry or a server: released with its last user,
			// never here; it leaves the order.
		case p.state == peerConnecting:
			e.peerOrder = append(e.peerOrder, k) // decided soon
		default:
			e.limited(LimitPeers)
			e.releasePeer(p, "peer table full")
			return
		}
	}
}

// Gauges are the engine's sizes, kept as they change: reading them costs
// nothing on the engine's goroutine, whatever the size of the cache.
type Gauges struct {
	// Entries counts cache entries by type name.
	Entries map[string]int `json:"entries"`
	// Peers counts NBMA peers by state name.
	Peers map[string]int `json:"peers"`
}

// Gauges returns the engine's sizes without asking its goroutine (the
// metrics scrape reads them).
func (e *Engine) Gauges() Gauges {
	g := Gauges{Entries: map[string]int{}, Peers: map[string]int{}}
	for t := TypeIncomplete; t <= TypeLocal; t++ {
		g.Entries[t.String()] = e.cache.countOf(t)
	}
	for s := peerIdle; s <= peerFailed; s++ {
		g.Peers[s.String()] = int(e.peerStates[s].Load())
	}
	return g
}
