package bgp

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func rng(p string, min, max int) prefixRange { return prefixRange{pfx(p), min, max} }

// TestNetworkRanges checks the accepting prefix set of one network less
// exclusions, entry by entry.
func TestNetworkRanges(t *testing.T) {
	for _, tc := range []struct {
		name     string
		network  string
		maxLen   int
		excluded []string
		want     []prefixRange
	}{
		{"no exclusion", "10.0.0.0/16", 26, nil, []prefixRange{rng("10.0.0.0/16", 16, 26)}},
		{"no exclusion, network longer than the limit", "10.5.0.0/28", 26, nil, []prefixRange{rng("10.5.0.0/28", 28, 28)}},
		{"one /24 out of a /16", "10.0.0.0/16", 26, []string{"10.0.5.0/24"}, []prefixRange{
			// The ancestors of 10.0.5.0/24 alone, the subtrees beside
			// its path whole.
			rng("10.0.0.0/16", 16, 16), rng("10.0.0.0/17", 17, 17), rng("10.0.0.0/18", 18, 18),
			rng("10.0.0.0/19", 19, 19), rng("10.0.0.0/20", 20, 20), rng("10.0.0.0/21", 21, 21),
			rng("10.0.0.0/22", 22, 26), rng("10.0.4.0/22", 22, 22), rng("10.0.4.0/23", 23, 23),
			rng("10.0.4.0/24", 24, 26), rng("10.0.6.0/23", 23, 26), rng("10.0.8.0/21", 21, 26),
			rng("10.0.16.0/20", 20, 26), rng("10.0.32.0/19", 19, 26), rng("10.0.64.0/18", 18, 26),
			rng("10.0.128.0/17", 17, 26),
		}},
		{"two exclusions in the two halves", "10.0.0.0/24", 26, []string{"10.0.0.0/26", "10.0.0.192/26"}, []prefixRange{
			rng("10.0.0.0/24", 24, 24), rng("10.0.0.0/25", 25, 25), rng("10.0.0.64/26", 26, 26),
			rng("10.0.0.128/25", 25, 25), rng("10.0.0.128/26", 26, 26),
		}},
		{"nested exclusions: the outer one is enough", "10.0.0.0/24", 26, []string{"10.0.0.0/25", "10.0.0.0/26"}, []prefixRange{
			rng("10.0.0.0/24", 24, 24), rng("10.0.0.128/25", 25, 26),
		}},
		{"an exclusion longer than the limit changes nothing", "10.0.0.0/24", 26, []string{"10.0.0.0/28"},
			[]prefixRange{rng("10.0.0.0/24", 24, 26)}},
		{"an exclusion at the limit", "10.0.0.0/25", 26, []string{"10.0.0.64/26"},
			[]prefixRange{rng("10.0.0.0/25", 25, 25), rng("10.0.0.0/26", 26, 26)}},
		{"an exclusion equal to the network leaves nothing", "10.0.0.0/24", 26, []string{"10.0.0.0/24"}, nil},
		{"an exclusion outside the network is ignored", "10.0.0.0/24", 26, []string{"10.9.0.0/24", "10.0.0.0/16"},
			[]prefixRange{rng("10.0.0.0/24", 24, 26)}},
	} {
		var ex []netip.Prefix
		for _, e := range tc.excluded {
			ex = append(ex, pfx(e))
		}
		got := networkRanges(pfx(tc.network), tc.maxLen, ex)
		slices.SortFunc(got, func(a, b prefixRange) int { return comparePrefix(a.Prefix, b.Prefix) })
		if d := cmp.Diff(tc.want, got, cmpNet); d != "" {
			t.Errorf("%s: networkRanges(%s le %d minus %v) (-want +got):\n%s", tc.name, tc.network, tc.maxLen, tc.excluded, d)
		}
	}
}

// TestRefusalOverlap: the reasons a spoke's prefixes get next to another
// spoke's more specific network.
func TestRefusalOverlap(t *testing.T) {
	cfg := Config{Role: RoleHub, Tunnel: pfx("172.16.0.1/16")}.WithDefaults()
	a := Neighbor{Kind: KindSpoke, MaxLen: 26, Networks: []netip.Prefix{pfx("10.0.0.0/16"), pfx("10.0.5.0/26")},
		Excluded: []netip.Prefix{pfx("10.0.5.0/24"), pfx("10.0.5.128/25"), pfx("10.0.9.0/28")}}
	const in24 = "inside 10.0.5.0/24, another spoke's more specific network"
	for _, tc := range []struct{ p, want string }{
		{"10.0.0.0/16", ""},
		{"10.0.4.0/23", ""}, // covers the other spoke's network
		{"10.0.0.0/22", ""},
		{"10.0.6.0/24", ""},
		{"10.0.5.0/24", in24},
		{"10.0.5.64/26", in24},
		{"10.0.5.128/25", "inside 10.0.5.128/25, another spoke's more specific network"}, // the most specific named
		{"10.0.5.0/26", ""},   // its own network inside the other's
		{"10.0.5.0/25", in24}, // covers its own /26, inside the other's /24
		{"10.0.5.0/27", "longer than /26 inside 10.0.5.0/26"}, // the most specific network's reason
		{"10.0.9.0/28", "longer than /26 inside 10.0.0.0/16"},
		{"10.0.9.0/24", ""}, // the exclusion is longer than the limit
		{"10.1.0.0/24", "outside the networks [10.0.0.0/16 10.0.5.0/26] the neighbour may announce"},
	} {
		if got := cfg.Refusal(a, pfx(tc.p)); got != tc.want {
			t.Errorf("Refusal(%s) = %q, want %q", tc.p, got, tc.want)
		}
	}
	// Two spokes with the same network: both may announce inside it.
	b := Neighbor{Kind: KindSpoke, MaxLen: 26, Networks: []netip.Prefix{pfx("10.0.0.0/16"), pfx("10.0.5.0/24")},
		Excluded: []netip.Prefix{pfx("10.0.5.0/24")}}
	if got := cfg.Refusal(b, pfx("10.0.5.128/25")); got != "" {
		t.Errorf("a spoke with the same network as another: Refusal(10.0.5.128/25) = %q, want accepted", got)
	}
}

// matchRanges is GoBGP's prefix-set match (PrefixCondition.Evaluate): an
// entry whose prefix contains p, p's length within its range.
func matchRanges(rs []prefixRange, p netip.Prefix) bool {
	for _, r := range rs {
		if r.Prefix.Contains(p.Addr()) && p.Bits() >= r.Prefix.Bits() && r.Min <= p.Bits() && p.Bits() <= r.Max {
			return true
		}
	}
	return false
}

// naiveAccept is the rule stated plainly: inside one of the spoke's
// networks, not longer than its limit, and not inside or equal to another
// spoke's network strictly inside that one.
func naiveAccept(n Neighbor, p netip.Prefix) bool {
	for _, network := range n.Networks {
		if !network.Contains(p.Addr()) || p.Bits() < network.Bits() || p.Bits() > max(n.MaxLen, network.Bits()) {
			continue
		}
		inside := false
		for _, e := range n.Excluded {
			if e.Bits() > network.Bits() && network.Contains(e.Addr()) && e.Contains(p.Addr()) && p.Bits() >= e.Bits() {
				inside = true
			}
		}
		if !inside {
			return true
		}
	}
	return false
}

// randomInside is a random prefix of bits bits inside (or, shorter,
// covering) base.
func randomInside(r *rand.Rand, base netip.Prefix, bits int) netip.Prefix {
	bits = min(max(bits, 0), 32)
	u := addrBits(base.Addr())
	if bits > base.Bits() {
		u |= r.Uint32() & (1<<(32-base.Bits()) - 1)
	}
	return netip.PrefixFrom(bitsAddr(u), bits).Masked()
}

// TestRefusalAgreesWithFilter: over random spokes (networks, exclusions,
// limits) and random prefixes near them, seeded, Refusal accepts exactly
// what the GoBGP prefix set built from the same neighbour matches, and
// both follow the rule.
func TestRefusalAgreesWithFilter(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 11))
	cfg := Config{Role: RoleHub, Tunnel: pfx("172.16.0.1/16")}.WithDefaults()
	region := pfx("10.0.0.0/12")
	accepted, refused := 0, 0
	for range 300 {
		n := Neighbor{Kind: KindSpoke, MaxLen: 20 + r.IntN(9)}
		for range 1 + r.IntN(3) {
			n.Networks = append(n.Networks, randomInside(r, region, 12+r.IntN(14)))
		}
		for range r.IntN(6) {
			// Exclusions strictly inside one network or another (some
			// longer than the limit, some nested).
			network := n.Networks[r.IntN(len(n.Networks))]
			if network.Bits() < 32 {
				n.Excluded = append(n.Excluded, randomInside(r, network, network.Bits()+1+r.IntN(min(12, 32-network.Bits()))))
			}
		}
		slices.SortFunc(n.Networks, comparePrefix)
		n.Networks = slices.Compact(n.Networks)
		slices.SortFunc(n.Excluded, comparePrefix)
		n.Excluded = slices.Compact(n.Excluded)
		rs := acceptRanges(n)
		near := slices.Concat(n.Networks, n.Excluded)
		for range 200 {
			base := near[r.IntN(len(near))]
			p := randomInside(r, base, base.Bits()-3+r.IntN(12))
			ok := cfg.Refusal(n, p) == ""
			if got := matchRanges(rs, p); got != ok {
				t.Fatalf("%+v: %s: Refusal says %q, the prefix set matches: %v (entries %v)", n, p, cfg.Refusal(n, p), got, rs)
			}
			if want := naiveAccept(n, p); ok != want {
				t.Fatalf("%+v: %s: Refusal says %q, the rule accepts: %v", n, p, cfg.Refusal(n, p), want)
			}
			if ok {
				accepted++
			} else {
				refused++
			}
		}
	}
	if accepted < 1000 || refused < 1000 {
		t.Errorf("%d accepted, %d refused: the random cases do not exercise both", accepted, refused)
	}
}

// TestNetIndex checks the index of spoke networks against a plain list,
// through random additions and removals (seeded).
func TestNetIndex(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 5))
	type own struct {
		p netip.Prefix
		a netip.Addr
	}
	var x netIndex
	var all []own
	region := pfx("10.0.0.0/14")
	for i := range 2000 {
		if len(all) > 0 && r.IntN(3) == 0 {
			j := r.IntN(len(all))
			x.remove(all[j].p, all[j].a)
			all = slices.Delete(all, j, j+1)
		} else {
			o := own{randomInside(r, region, 8+r.IntN(17)), bitsAddr(0xac100000 | uint32(r.IntN(20)))}
			if !slices.Contains(all, o) {
				x.add(o.p, o.a)
				all = append(all, o)
			}
		}
		q := randomInside(r, region, 8+r.IntN(17))
		var got, want []own
		x.covering(q, func(p netip.Prefix, a netip.Addr) { got = append(got, own{p, a}) })
		x.inside(q, func(p netip.Prefix, a netip.Addr) { got = append(got, own{p, a}) })
		for _, o := range all {
			if o.p != q && (o.p.Bits() < q.Bits() && o.p.Contains(q.Addr()) || o.p.Bits() > q.Bits() && q.Contains(o.p.Addr())) {
				want = append(want, o)
			}
		}
		sortOwn := func(s []own) {
			slices.SortFunc(s, func(a, b own) int {
				if c := comparePrefix(a.p, b.p); c != 0 {
					return c
				}
				return a.a.Compare(b.a)
			})
		}
		sortOwn(got)
		sortOwn(want)
		if d := cmp.Diff(want, got, cmpNet, cmp.AllowUnexported(own{})); d != "" {
			t.Fatalf("step %d, around %s (-want +got):\n%s", i, q, d)
		}
	}
	for _, o := range all {
		x.remove(o.p, o.a)
	}
	if x.root.child != [2]*netNode{} || len(x.root.owners) > 0 {
		t.Errorf("the index is not empty once every network is removed: %+v", x.root)
	}
}
