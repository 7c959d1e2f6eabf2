package nhrp

import (
	"net/netip"

	"github.com/google/btree"
)

// ownKind is what an item of the cache's owner index is keyed by: the
// addresses an entry can be asked for by, besides its prefix.
type ownKind uint8

const (
	// byNBMA: the entry's NBMA address, where its packets go (a peer's
	// SA going down, a revoked peer, a purge from that address).
	byNBMA ownKind = iota
	// bySrc: the NBMA address of the node a binding or shortcut was
	// learned from, when it is not the entry's own (a purge from it).
	bySrc
	// byOwner: the tunnel address a binding or shortcut belongs to
	// (ownerOf: a purge its owner's identity proves).
	byOwner
	// byServer: the negative and incomplete entries, which a server may
	// purge (key: the zero address).
	byServer
	ownKinds
)

// ownItem is an item of the owner index: an entry under one of its keys.
// It is ordered by its entry's prefix, which does not change while the
// entry is in the cache (40 bytes an item: no copy of the prefix).
type ownItem struct {
	kind ownKind
	key  netip.Addr
	e    *entry
}

// ownLess orders the owner index by kind, key, then prefix (protoCompare):
// the entries of one key under a prefix are a range of it.
func ownLess(a, b ownItem) bool {
	if a.kind != b.kind {
		return a.kind < b.kind
	}
	if c := a.key.Compare(b.key); c != 0 {
		return c < 0
	}
	return protoCompare(a.e.proto, b.e.proto) < 0
}

// ownPivot is where a walk of the owner index starts: the first item of
// kind and key from the prefix from. It uses the cache's pivot entry
// (engine goroutine only; a walk does not nest).
func (c *cache) ownPivot(kind ownKind, key netip.Addr, from netip.Prefix) ownItem {
	c.pivot.proto = from
	return ownItem{kind: kind, key: key, e: c.pivot}
}

func newOwnIndex() *btree.BTreeG[ownItem] { return btree.NewG(32, ownLess) }

// ownItems returns the owner index items of an entry, from its fields.
// An entry's nbma and src change in the cache only through setNBMA and
// setSrc, which keep the index; its type, prefix and next hop never do.
func ownItems(e *entry) (items [ownKinds]ownItem, n int) {
	add := func(k ownKind, key netip.Addr) {
		items[n] = ownItem{kind: k, key: key, e: e}
		n++
	}
	if e.nbma.IsValid() {
		add(byNBMA, e.nbma)
	}
	if e.src.IsValid() && e.src != e.nbma {
		add(bySrc, e.src)
	}
	if o := ownerOf(e); o.IsValid() {
		add(byOwner, o)
	}
	if e.typ == TypeNegative || e.typ == TypeIncomplete {
		add(byServer, netip.Addr{})
	}
	return items, n
}

// index adds an entry of the map to the owner index.
func (c *cache) index(e *entry) {
	items, n := ownItems(e)
	for _, it := range items[:n] {
		c.own.ReplaceOrInsert(it)
	}
}

// unindex takes an entry out of the owner index.
func (c *cache) unindex(e *entry) {
	items, n := ownItems(e)
	for _, it := range items[:n] {
		c.own.Delete(it)
	}
}

// setNBMA moves an entry to another NBMA address, keeping the owner index
// when the entry is in the cache.
func (c *cache) setNBMA(e *entry, nbma netip.Addr) {
	in := c.m[e.proto] == e
	if in {
		c.unindex(e)
	}
	e.nbma = nbma
	if in {
		c.index(e)
	}
}

// setSrc records the node an entry was learned from, keeping the owner
// index when the entry is in the cache.
func (c *cache) setSrc(e *entry, src netip.Addr) {
	if e.src == src {
		return
	}
	in := c.m[e.proto] == e
	if in {
		c.unindex(e)
	}
	e.src = src
	if in {
		c.index(e)
	}
}

// keyed returns the entries indexed under key, in address order: the
// work is theirs and a lookup, never the cache's.
func (c *cache) keyed(kind ownKind, key netip.Addr) []*entry {
	var out []*entry
	c.own.AscendGreaterOrEqual(c.ownPivot(kind, key, netip.Prefix{}), func(it ownItem) bool {
		if it.kind != kind || it.key != key {
			return false
		}
		c.visited++
		out = append(out, it.e)
		return true
	})
	return out
}

// owned returns the entries indexed under key whose prefix is within p
// (p itself included), in address order: a range of the owner index.
func (c *cache) owned(kind ownKind, key netip.Addr, p netip.Prefix) []*entry {
	p = p.Masked()
	var out []*entry
	// As in under: the prefixes within p are those of at least its
	// length from its first address to its last.
	c.own.AscendGreaterOrEqual(c.ownPivot(kind, key, netip.PrefixFrom(p.Addr(), 0)), func(it ownItem) bool {
		if it.kind != kind || it.key != key || !p.Contains(it.e.proto.Addr()) {
			return false
		}
		c.visited++
		if it.e.proto.Bits() >= p.Bits() {
			out = append(out, it.e)
		}
		return true
	})
	return out
}
