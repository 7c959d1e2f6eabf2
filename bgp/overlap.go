package bgp

import (
	"fmt"
	"net/netip"
	"slices"
)

// Overlapping spoke networks. An address belongs to the spoke whose
// network (certificate's OU=NET=, or bgp.spokes) covering it is the most
// specific: a spoke may announce prefixes inside its networks except
// inside (or equal to) another spoke's network strictly inside one of its
// own (Neighbor.Excluded). Prefixes covering the other spoke's network
// stay allowed: longest match keeps that network's traffic with its
// spoke. Two spokes with the same network may both announce inside it, as
// before (neither is more specific).

// excludes reports whether an exclusion applies to a spoke's network:
// only one strictly inside it (an exclusion equal to a network the spoke
// has too is the same network, which both may announce).
func excludes(network, e netip.Prefix) bool {
	return e.Bits() > network.Bits() && network.Contains(e.Addr())
}

// excludedRefusal says why p, inside network and not too long, is refused
// for lying inside another spoke's more specific network (the most
// specific of them is named), or "".
func (n Neighbor) excludedRefusal(network, p netip.Prefix) string {
	var in netip.Prefix
	for _, e := range n.Excluded {
		if excludes(network, e) && e.Contains(p.Addr()) && p.Bits() >= e.Bits() && e.Bits() > in.Bits() {
			in = e
		}
	}
	if !in.IsValid() {
		return ""
	}
	return fmt.Sprintf("inside %s, another spoke's more specific network", in)
}

// prefixRange is a prefix-set entry: the prefixes inside Prefix of Min to
// Max bits.
type prefixRange struct {
	Prefix   netip.Prefix
	Min, Max int
}

// acceptRanges is a spoke's accepting prefix set: each network (up to
// MaxLen bits) minus the exclusions strictly inside it. What it matches is
// exactly what Config.Refusal accepts of the spoke by its networks.
func acceptRanges(n Neighbor) []prefixRange {
	var out []prefixRange
	for _, network := range n.Networks {
		var ex []netip.Prefix
		for _, e := range n.Excluded {
			if excludes(network, e) {
				ex = append(ex, e)
			}
		}
		out = append(out, networkRanges(network, n.MaxLen, ex)...)
	}
	slices.SortFunc(out, func(a, b prefixRange) int {
		if c := comparePrefix(a.Prefix, b.Prefix); c != 0 {
			return c
		}
		if a.Min != b.Min {
			return a.Min - b.Min
		}
		return a.Max - b.Max
	})
	return slices.Compact(out)
}

// networkRanges is the prefixes inside network of its length to
// max(maxLen, its length) bits, less those inside or equal to any of
// excluded, as prefix-set entries: down the path to each exclusion, the
// prefix at each level alone (it covers the exclusion: allowed) and the
// sibling subtrees beside the path whole. An exclusion longer than the
// limit changes nothing (all inside it is too long anyway); one equal to
// network leaves nothing. At most two entries per exclusion and level:
// 2 × 32 × len(excluded).
func networkRanges(network netip.Prefix, maxLen int, excluded []netip.Prefix) []prefixRange {
	network = network.Masked()
	limit := max(maxLen, network.Bits())
	var ex []netip.Prefix
	for _, e := range excluded {
		if e.Bits() >= network.Bits() && e.Bits() <= limit && network.Contains(e.Addr()) {
			ex = append(ex, e.Masked())
		}
	}
	var out []prefixRange
	var walk func(p netip.Prefix, ex []netip.Prefix)
	walk = func(p netip.Prefix, ex []netip.Prefix) {
		if len(ex) == 0 {
			out = append(out, prefixRange{p, p.Bits(), limit})
			return
		}
		if slices.Contains(ex, p) {
			return
		}
		// Every exclusion left is strictly inside p, so p is shorter
		// than the limit and has two halves.
		out = append(out, prefixRange{p, p.Bits(), p.Bits()})
		lo, hi := halves(p)
		var exLo, exHi []netip.Prefix
		for _, e := range ex {
			if lo.Contains(e.Addr()) {
				exLo = append(exLo, e)
			} else {
				exHi = append(exHi, e)
			}
		}
		walk(lo, exLo)
		walk(hi, exHi)
	}
	walk(network, ex)
	return out
}

// halves splits an IPv4 prefix shorter than /32 in two.
func halves(p netip.Prefix) (lo, hi netip.Prefix) {
	a := addrBits(p.Addr()) | 1<<(31-p.Bits())
	return netip.PrefixFrom(p.Addr(), p.Bits()+1), netip.PrefixFrom(bitsAddr(a), p.Bits()+1)
}

func addrBits(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func bitsAddr(u uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(u >> 24), byte(u >> 16), byte(u >> 8), byte(u)})
}

// netIndex holds the spoke neighbours' networks in a binary trie (one
// level per bit) with the spokes that have each: a network's strictly
// covering networks are on its path from the root (at most 32 nodes), the
// networks strictly inside it in its subtree (at most 32 nodes per
// network found). It belongs to the controller's goroutine.
type netIndex struct{ root netNode }

type netNode struct {
	child  [2]*netNode
	owners map[netip.Addr]struct{}
}

// add records that spoke a has network p.
func (x *netIndex) add(p netip.Prefix, a netip.Addr) {
	n, u := &x.root, addrBits(p.Addr())
	for i := range p.Bits() {
		b := u >> (31 - i) & 1
		if n.child[b] == nil {
			n.child[b] = &netNode{}
		}
		n = n.child[b]
	}
	if n.owners == nil {
		n.owners = map[netip.Addr]struct{}{}
	}
	n.owners[a] = struct{}{}
}

// remove forgets that spoke a has network p, and the nodes left empty.
func (x *netIndex) remove(p netip.Prefix, a netip.Addr) {
	path := make([]*netNode, 0, 33)
	n, u := &x.root, addrBits(p.Addr())
	path = append(path, n)
	for i := range p.Bits() {
		if n = n.child[u>>(31-i)&1]; n == nil {
			return
		}
		path = append(path, n)
	}
	delete(n.owners, a)
	for i := len(path) - 1; i > 0; i-- {
		n := path[i]
		if len(n.owners) > 0 || n.child[0] != nil || n.child[1] != nil {
			return
		}
		path[i-1].child[u>>(32-i)&1] = nil
	}
}

// covering calls f for each spoke with a network strictly covering p.
func (x *netIndex) covering(p netip.Prefix, f func(netip.Prefix, netip.Addr)) {
	n, u := &x.root, addrBits(p.Addr())
	for i := range p.Bits() {
		for a := range n.owners {
			f(netip.PrefixFrom(p.Addr(), i).Masked(), a)
		}
		if n = n.child[u>>(31-i)&1]; n == nil {
			return
		}
	}
}

// inside calls f for each spoke with a network strictly inside p.
func (x *netIndex) inside(p netip.Prefix, f func(netip.Prefix, netip.Addr)) {
	n, u := &x.root, addrBits(p.Addr())
	for i := range p.Bits() {
		if n = n.child[u>>(31-i)&1]; n == nil {
			return
		}
	}
	var walk func(n *netNode, u uint32, bits int)
	walk = func(n *netNode, u uint32, bits int) {
		if bits > p.Bits() {
			for a := range n.owners {
				f(netip.PrefixFrom(bitsAddr(u), bits), a)
			}
		}
		for b, c := range n.child {
			if c != nil {
				walk(c, u|uint32(b)<<(31-bits), bits+1)
			}
		}
	}
	walk(n, addrBits(p.Masked().Addr()), p.Bits())
}
