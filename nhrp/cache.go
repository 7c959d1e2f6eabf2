package nhrp

import (
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"github.com/google/btree"
)

// entry is a cache entry. Entries belong to the engine's goroutine.
type entry struct {
	typ   EntryType
	proto netip.Prefix
	// nbma is where packets go; claimed is what the peer wrote in its
	// packets when that differs (NAT).
	nbma    netip.Addr
	claimed netip.Addr
	// nextHop is a shortcut route's tunnel next hop.
	nextHop netip.Addr
	// src is the NBMA address of the node a resolved binding or shortcut
	// was learned from (the responder, or the server that passed the
	// answer on): it may purge it.
	src     netip.Addr
	flags   Flags
	created time.Time
	expires time.Time // zero: never
	holding uint16
	mtu     uint16
	reqID   uint32 // the registration that created a dynamic entry

	identity string
	attrs    map[string][]string
	// nets are the networks a client's identity allows behind it
	// (Verdict.Networks); empty: no restriction.
	nets []netip.Prefix

	used time.Time // when traffic last went through it (from the data plane)

	expire *timer // expiry
	renew  *timer // shortcut renewal or idle check

	// told lists the peers a local entry was advertised to in resolution
	// replies, so they can be purged when it goes away (or this node's
	// NBMA address moves): only requesters whose identity was proven, each
	// until the binding it was given runs out, at most maxTold of them.
	told map[netip.Addr]toldPeer // requester NBMA → its tunnel address

	// unconfirmed: restored from the state of a previous run and not yet
	// proven again by its peer's identity.
	unconfirmed bool

	// kernel says what the entry installed: a neighbour entry, a route.
	neigh bool
	route bool

	// prev and next link the entry in its type's eviction list.
	prev, next *entry
}

// host reports whether the entry is for a single address.
func (e *entry) host() bool { return e.proto.IsSingleIP() }

// snapshot returns the public view of the entry.
func (e *entry) snapshot(peerState string) CacheEntry {
	c := CacheEntry{
		Type: e.typ, Proto: e.proto, NBMA: e.nbma, NextHop: e.nextHop,
		Flags: e.flags.Names(), Created: e.created, Expires: e.expires,
		HoldingTime: int(e.holding), MTU: int(e.mtu), Identity: e.identity,
		PeerState: peerState,
	}
	if e.claimed.IsValid() && e.claimed != e.nbma {
		c.ClaimedNBMA = e.claimed
	}
	if len(e.attrs) > 0 {
		c.Attrs = make(map[string][]string, len(e.attrs))
		for k, v := range e.attrs {
			c.Attrs[k] = slices.Clone(v)
		}
	}
	return c
}

// cache maps protocol prefixes to entries, with longest-prefix lookups
// (a map per prefix length), the entries in address order (a B-tree: the
// listings, and the entries under a prefix) and the
// evictable entries of each type, oldest first (intrusive lists). It
// counts its entries by type for the metrics, which read the counts
// without the engine's goroutine.
type cache struct {
	m map[netip.Prefix]*entry
	// lens counts entries per prefix length (index 0-128, IPv6 lengths
	// offset by 33 for IPv6) so lookups skip empty lengths.
	lens4 [33]int
	lens6 [129]int
	// ord holds the entries in key order (protoCompare) so readers can
	// walk the cache in bounded chunks from a cursor (Engine.CacheEach),
	// and the entries under a prefix are a range of it (purges).
	ord *btree.BTreeG[*entry]
	// own indexes the entries by the addresses that may ask for them
	// (ownKind): the entries of one peer, or of one purge's sender under
	// its prefix, are a range of it, not a walk of the cache.
	own *btree.BTreeG[ownItem]
	// pivot is the entry a walk of own starts from (ownPivot).
	pivot *entry
	// lru lists the entries of each type, oldest first (the evictable
	// types' are the eviction order).
	lru [TypeLocal + 1]entryList
	// types counts entries by type.
	types [TypeLocal + 1]atomic.Int64
	// visited counts the entries the cache's walks yielded (engine
	// goroutine only): the work a packet or call cost, which the tests
	// bound.
	visited int
}

// entryList is an intrusive list of entries, oldest first.
type entryList struct{ head, tail *entry }

func (l *entryList) push(e *entry) {
	e.prev, e.next = l.tail, nil
	if l.tail != nil {
		l.tail.next = e
	} else {
		l.head = e
	}
	l.tail = e
}

func (l *entryList) remove(e *entry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else if l.head == e {
		l.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else if l.tail == e {
		l.tail = e.prev
	}
	e.prev, e.next = nil, nil
}

func newCache() *cache {
	return &cache{m: make(map[netip.Prefix]*entry), ord: btree.NewG(32, func(a, b *entry) bool {
		return protoCompare(a.proto, b.proto) < 0
	}), own: newOwnIndex(), pivot: &entry{}}
}

// protoCompare orders prefixes by address, then length: the order of
// the cache's listings.
func protoCompare(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// after returns up to n entries whose prefix sorts after from (all from
// the first when first is true), in key order.
func (c *cache) after(from netip.Prefix, first bool, n int) []*entry {
	out := make([]*entry, 0, min(n, len(c.m)))
	visit := func(e *entry) bool {
		if !first && protoCompare(e.proto, from) <= 0 {
			return true
		}
		c.visited++
		out = append(out, e)
		return len(out) < n
	}
	if first {
		c.ord.Ascend(visit)
	} else {
		c.ord.AscendGreaterOrEqual(&entry{proto: from}, visit)
	}
	return out
}

func (c *cache) get(p netip.Prefix) *entry { return c.m[p.Masked()] }

func (c *cache) put(e *entry) {
	e.proto = e.proto.Masked()
	old, ok := c.m[e.proto]
	if ok && old == e {
		return
	}
	if ok {
		c.unlink(old)
		c.unindex(old)
	} else {
		c.count(e.proto, 1)
	}
	c.m[e.proto] = e
	c.ord.ReplaceOrInsert(e)
	c.index(e)
	if int(e.typ) < len(c.lru) {
		c.lru[e.typ].push(e)
	}
	if int(e.typ) < len(c.types) {
		c.types[e.typ].Add(1)
	}
}

func (c *cache) del(e *entry) {
	if cur, ok := c.m[e.proto]; ok && cur == e {
		delete(c.m, e.proto)
		c.ord.Delete(e)
		c.unindex(e)
		c.count(e.proto, -1)
		c.unlink(e)
	}
}

// unlink takes an entry leaving the map out of its list and counts.
func (c *cache) unlink(e *entry) {
	if int(e.typ) < len(c.lru) {
		c.lru[e.typ].remove(e)
	}
	if int(e.typ) < len(c.types) {
		c.types[e.typ].Add(-1)
	}
}

// evictable returns the entry to evict for a new one of type t: the
// oldest incomplete, then negative, then resolved binding, then shortcut,
// never one of a higher type than t (incomplete and negative ones always
// go first); nil when there is none.
func (c *cache) evictable(t EntryType) *entry {
	for typ := TypeIncomplete; typ <= TypeShortcut; typ++ {
		if typ > t && typ > TypeNegative {
			break
		}
		if e := c.lru[typ].head; e != nil {
			return e
		}
	}
	return nil
}

// underChunk is the most entries under walks between calls of its f;
// it starts at one and doubles, so a walk that stops at once looks at one
// entry.
const underChunk = 64

// under calls f for every entry whose prefix is within p (p itself
// included), in address order, until f returns false: a range of the
// address order, walked in chunks from a cursor, so a walk that stops
// early costs what it visited (and a lookup), not every entry under p.
// f may change the cache: an entry it removes ahead is skipped, one it
// adds ahead may be visited.
func (c *cache) under(p netip.Prefix, f func(*entry) bool) {
	if p.IsSingleIP() {
		if e := c.m[p]; e != nil {
			c.visited++
			f(e)
		}
		return
	}
	p = p.Masked()
	// The prefixes within p are those of at least its length from its
	// first address to its last.
	from, first := netip.PrefixFrom(p.Addr(), 0), true
	var chunk []*entry
	for size := 1; ; size = min(2*size, underChunk) {
		chunk = chunk[:0]
		c.ord.AscendGreaterOrEqual(&entry{proto: from}, func(e *entry) bool {
			if !first && protoCompare(e.proto, from) <= 0 {
				return true
			}
			if !p.Contains(e.proto.Addr()) {
				return false
			}
			c.visited++
			if e.proto.Bits() >= p.Bits() {
				chunk = append(chunk, e)
			}
			return len(chunk) < size
		})
		for _, e := range chunk {
			if c.m[e.proto] == e && !f(e) {
				return
			}
		}
		if len(chunk) < size {
			return
		}
		from, first = chunk[len(chunk)-1].proto, false
	}
}

// ofType returns the entries of type t, oldest first: a walk of that
// type's list, not of the cache.
func (c *cache) ofType(t EntryType) []*entry {
	if int(t) >= len(c.lru) {
		return nil
	}
	var out []*entry
	for e := c.lru[t].head; e != nil; e = e.next {
		c.visited++
		out = append(out, e)
	}
	return out
}

// countOf returns how many entries of type t the cache holds; safe from
// any goroutine.
func (c *cache) countOf(t EntryType) int {
	if int(t) < len(c.types) {
		return int(c.types[t].Load())
	}
	return 0
}

func (c *cache) count(p netip.Prefix, d int) {
	if p.Addr().Is4() {
		c.lens4[p.Bits()] += d
	} else {
		c.lens6[p.Bits()] += d
	}
}

// lookup returns the entry with the longest prefix containing a for which
// ok returns true (nil ok accepts every entry).
func (c *cache) lookup(a netip.Addr, ok func(*entry) bool) *entry {
	lens := c.lens6[:]
	if a.Is4() {
		lens = c.lens4[:]
	}
	for l := len(lens) - 1; l >= 0; l-- {
		if lens[l] == 0 {
			continue
		}
		p, err := a.Prefix(l)
		if err != nil {
			continue
		}
		if e := c.m[p]; e != nil && (ok == nil || ok(e)) {
			return e
		}
	}
	return nil
}

// all returns every entry, sorted by prefix.
func (c *cache) all() []*entry {
	out := make([]*entry, 0, len(c.m))
	c.ord.Ascend(func(e *entry) bool {
		c.visited++
		out = append(out, e)
		return true
	})
	return out
}

// hostPrefix returns the single-address prefix of a.
func hostPrefix(a netip.Addr) netip.Prefix {
	return netip.PrefixFrom(a, a.BitLen())
}
