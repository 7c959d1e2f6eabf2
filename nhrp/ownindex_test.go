package nhrp

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// checkIndex compares the owner index with what a full scan of the map
// says it should hold: every entry under each of its keys, nothing else.
func (c *cache) checkIndex() error {
	want := map[ownItem]bool{}
	for p, e := range c.m {
		if e.proto != p {
			return fmt.Errorf("entry %s kept under %s", e.proto, p)
		}
		items, n := ownItems(e)
		for _, it := range items[:n] {
			want[it] = true
		}
	}
	var errs []string
	c.own.Ascend(func(it ownItem) bool {
		if !want[it] {
			errs = append(errs, fmt.Sprintf("stale item %d/%s (entry %s %s at %s from %s)", it.kind, it.key, it.e.typ, it.e.proto, it.e.nbma, it.e.src))
		}
		delete(want, it)
		return len(errs) < 5
	})
	for it := range want {
		errs = append(errs, fmt.Sprintf("missing item %d/%s/%s", it.kind, it.key, it.e.proto))
		if len(errs) >= 10 {
			break
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("owner index: %v", errs)
	}
	return nil
}

// TestOwnIndexRandom runs seeded random operations on a cache — new
// entries, replacements, removals, moves to another NBMA address, another
// source — and after each checks the owner index against a full scan, and
// its lookups (the entries of an address, of a sender under a prefix)
// against the naive filter of every entry.
func TestOwnIndexRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(18, 1))
	c := newCache()
	addr := func(n int) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, byte(rng.IntN(4)), byte(rng.IntN(n))}) }
	nbma := func() netip.Addr {
		if rng.IntN(8) == 0 {
			return netip.Addr{}
		}
		return netip.AddrFrom4([4]byte{192, 0, 2, byte(1 + rng.IntN(6))})
	}
	prefix := func() netip.Prefix {
		return netip.PrefixFrom(addr(32), []int{16, 22, 24, 30, 32, 32, 32}[rng.IntN(7)]).Masked()
	}
	types := []EntryType{TypeIncomplete, TypeNegative, TypeCached, TypeShortcut, TypeDynamic, TypeNHS, TypeStatic, TypeLocal}
	for step := range 20000 {
		var entries []*entry
		for _, e := range c.m {
			entries = append(entries, e)
		}
		slices.SortFunc(entries, func(a, b *entry) int { return protoCompare(a.proto, b.proto) })
		pick := func() *entry { return entries[rng.IntN(len(entries))] }
		op := rng.IntN(6)
		if len(entries) == 0 {
			op = 0
		}
		switch op {
		case 0, 1: // a new entry, or one replacing another of its prefix
			e := &entry{typ: types[rng.IntN(len(types))], proto: prefix(), nbma: nbma(), src: nbma()}
			if e.typ == TypeShortcut {
				e.nextHop = addr(8)
			}
			c.put(e)
		case 2:
			c.del(pick())
		case 3:
			c.setNBMA(pick(), nbma())
		case 4:
			c.setSrc(pick(), nbma())
		case 5: // out of the cache: the index must not follow
			e := pick()
			c.del(e)
			c.setNBMA(e, nbma())
			c.setSrc(e, nbma())
		}
		if err := c.checkIndex(); err != nil {
			t.Fatalf("step %d (op %d): %v", step, op, err)
		}
		if step%16 != 0 {
			continue
		}
		key, pf := nbma(), prefix()
		var wantKeyed, wantOwned, wantSrc, wantUnder []*entry
		for _, e := range c.all() {
			if e.nbma.IsValid() && e.nbma == key {
				wantKeyed = append(wantKeyed, e)
				if pf.Contains(e.proto.Addr()) && e.proto.Bits() >= pf.Bits() {
					wantOwned = append(wantOwned, e)
				}
			}
			if e.src.IsValid() && e.src == key && e.src != e.nbma && pf.Contains(e.proto.Addr()) && e.proto.Bits() >= pf.Bits() {
				wantSrc = append(wantSrc, e)
			}
			if pf.Contains(e.proto.Addr()) && e.proto.Bits() >= pf.Bits() {
				wantUnder = append(wantUnder, e)
			}
		}
		if got := c.keyed(byNBMA, key); !slices.Equal(got, wantKeyed) {
			t.Fatalf("step %d: entries at %s: %d, want %d", step, key, len(got), len(wantKeyed))
		}
		if got := c.owned(byNBMA, key, pf); !slices.Equal(got, wantOwned) {
			t.Fatalf("step %d: entries at %s under %s: %d, want %d", step, key, pf, len(got), len(wantOwned))
		}
		if got := c.owned(bySrc, key, pf); !slices.Equal(got, wantSrc) {
			t.Fatalf("step %d: entries from %s under %s: %d, want %d", step, key, pf, len(got), len(wantSrc))
		}
		var gotUnder []*entry
		c.under(pf, func(e *entry) bool { gotUnder = append(gotUnder, e); return true })
		if !slices.Equal(gotUnder, wantUnder) {
			t.Fatalf("step %d: under %s: %d entries, want %d", step, pf, len(gotUnder), len(wantUnder))
		}
		if len(wantUnder) > 0 {
			// A walk that stops at once costs what it looked at, not
			// the range: at most the supernets at its start and one.
			before := c.visited
			c.under(pf, func(*entry) bool { return false })
			if v := c.visited - before; v > 1+32 {
				t.Fatalf("step %d: an under walk of %s stopped at its first entry visited %d", step, pf, v)
			}
		}
	}
}

// indexHub is a hub with n registered spokes (dynamic entries: spoke i
// at benchSpoke(i)) and n resolved bindings, 10.128.0.0/9, each at its own
// NBMA address (cachedBinding): 2n entries.
func indexHub(tb testing.TB, n int) (*Engine, func()) {
	tb.Helper()
	eng, _, stop := startBenchHub(tb, 1024, nil)
	ctx := context.Background()
	if err := eng.waitRunning(ctx); err != nil {
		tb.Fatal(err)
	}
	hub := netip.MustParseAddr("10.0.0.1")
	err := eng.do(ctx, func() {
		eng.now = time.Now()
		for i := range n {
			_, nbma := benchSpoke(i)
			eng.handlePacket(benchRegistration(i, hub, uint32(i+1), 7200), nbma)
			p, at := cachedBinding(i)
			eng.installBinding(p, at, netip.Addr{}, at, 0, time.Hour, 0)
		}
	})
	if err != nil {
		tb.Fatal(err)
	}
	if got := eng.entryCount(); got < 2*n {
		tb.Fatalf("hub holds %d entries, want %d", got, 2*n)
	}
	// The neighbours the registrations queued are applied off the
	// engine's goroutine: done before anything is measured.
	fctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	eng.kern.flush(fctx)
	if fctx.Err() != nil {
		tb.Fatalf("%d kernel operations still queued after a minute", eng.kern.pending())
	}
	return eng, stop
}

// cachedBinding is resolved binding i of indexHub: a host in 10.128.0.0/9
// at its own NBMA address in 100.100.0.0/16 (which also sent the answer).
func cachedBinding(i int) (netip.Prefix, netip.Addr) {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 128 + byte(i>>16), byte(i >> 8), byte(i)}), 32),
		netip.AddrFrom4([4]byte{100, 100 + byte(i>>16), byte(i >> 8), byte(i)})
}

func (e *Engine) entryCount() int {
	n := 0
	e.do(context.Background(), func() { n = len(e.cache.m) })
	return n
}

// visits runs f on the engine's goroutine and returns how many cache
// entries its walks visited.
func visits(t testing.TB, e *Engine, f func()) int {
	t.Helper()
	v := 0
	if err := e.do(context.Background(), func() {
		e.now = time.Now()
		before := e.cache.visited
		f()
		v = e.cache.visited - before
	}); err != nil {
		t.Fatal(err)
	}
	return v
}

// aroundHub covers 10.0.0.0/8 except the hub's 10.0.0.1 in 24 CIEs: a
// purge of everything that dodges the check of the hub's own address.
func aroundHub() []wire.CIE {
	var out []wire.CIE
	own := uint32(10<<24 | 1)
	for b := 8; b < 32; b++ {
		v := own ^ (1 << (31 - b))
		v &^= 1<<(31-b) - 1
		out = append(out, wire.CIE{PrefixLen: uint8(b + 1), Proto: netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})})
	}
	return out
}

func purgeFrom(from, src netip.Addr, id uint32, cies []wire.CIE) []byte {
	return floodEncode(&wire.Packet{Type: wire.TypePurgeRequest, HopCount: 255, RequestID: id,
		SrcNBMA: from, SrcProto: src, DstProto: netip.MustParseAddr("10.0.0.1"), CIEs: cies})
}

// TestPurgeWorkIsTheSenders: a Purge Request costs its sender's entries
// under each CIE and a lookup, not the cache. Measured before on a hub of
// 50,000 spokes: a forged purge of 10.0.0.0/8 (in 24 CIEs around the
// hub's address) from an unregistered source copied every entry (100,000
// visits, 22 ms) to refuse them; now it looks at a handful, is still
// refused once per CIE and removes nothing. A spoke's purge of its own
// registration and a server's of the bindings it passed on still work,
// at the cost of what they remove.
func TestPurgeWorkIsTheSenders(t *testing.T) {
	const n = 50000
	eng, stop := indexHub(t, n)
	defer stop()
	ctx := context.Background()
	refused := func() uint64 {
		tr, err := eng.Traffic(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return tr.Refused[RefusedPurge.String()]
	}
	cies := aroundHub()
	// The CIEs that cover entries: each is refused once.
	covering := uint64(0)
	if eng.do(ctx, func() {
		for _, c := range cies {
			eng.cache.under(netip.PrefixFrom(c.Proto, int(c.PrefixLen)), func(*entry) bool {
				covering++
				return false
			})
		}
	}) != nil {
		t.Fatal("engine stopped")
	}

	r0, size := refused(), eng.entryCount()
	forger := netip.MustParseAddr("100.64.0.9")
	v := visits(t, eng, func() { eng.handlePacket(purgeFrom(forger, netip.MustParseAddr("10.200.0.9"), 1, cies), forger) })
	if v > 2*len(cies) {
		t.Errorf("a forged purge of %d entries visited %d, want at most %d (2 a CIE)", size, v, 2*len(cies))
	}
	if covering < 16 {
		t.Fatalf("only %d CIEs cover entries: the hub is not full enough to tell", covering)
	}
	if got := refused() - r0; got != covering {
		t.Errorf("forged purge: %d refusals, want %d (one a CIE covering entries)", got, covering)
	}
	if got := eng.entryCount(); got != size {
		t.Errorf("forged purge: %d entries left of %d", got, size)
	}

	// Spoke 7 purges its own registration (a host CIE): gone, nothing
	// refused.
	proto, nbma := benchSpoke(7)
	r0 = refused()
	v = visits(t, eng, func() {
		eng.handlePacket(purgeFrom(nbma, proto, 2, []wire.CIE{{PrefixLen: 32, Proto: proto}}), nbma)
	})
	if v > 4 {
		t.Errorf("a spoke's purge of its registration visited %d entries", v)
	}
	if refused() != r0 {
		t.Error("a spoke's purge of its own registration was refused")
	}
	if eng.do(ctx, func() {
		if en := eng.cache.get(hostPrefix(proto)); en != nil && en.typ == TypeDynamic {
			t.Errorf("spoke 7's registration survived its purge: %s at %s", en.proto, en.nbma)
		}
	}) != nil {
		t.Fatal("engine stopped")
	}

	// Spoke 8 purges everything around the hub: its registration goes,
	// every CIE covering entries is refused (each covers others'), the
	// others stay.
	proto, nbma = benchSpoke(8)
	r0, size = refused(), eng.entryCount()
	v = visits(t, eng, func() { eng.handlePacket(purgeFrom(nbma, proto, 3, cies), nbma) })
	if v > 2*len(cies)+1 {
		t.Errorf("a spoke's purge of everything visited %d entries, want at most %d", v, 2*len(cies)+1)
	}
	if got := refused() - r0; got != covering {
		t.Errorf("spoke's purge of everything: %d refusals, want %d", got, covering)
	}
	if got := eng.entryCount(); got != size-1 {
		t.Errorf("spoke's purge of everything: %d entries left of %d, want its own gone", got, size)
	}

	// A server that passed on 256 bindings purges their /24: all go,
	// none refused, at the cost of those 256.
	server := netip.MustParseAddr("203.0.113.77")
	if eng.do(ctx, func() {
		for i := range 256 {
			p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 250, 1, byte(i)}), 32)
			eng.installBinding(p, netip.AddrFrom4([4]byte{100, 99, 1, byte(i)}), netip.Addr{}, server, 0, time.Hour, 0)
		}
	}) != nil {
		t.Fatal("engine stopped")
	}
	r0, size = refused(), eng.entryCount()
	v = visits(t, eng, func() {
		eng.handlePacket(purgeFrom(server, netip.MustParseAddr("10.250.0.1"), 4, []wire.CIE{{PrefixLen: 24, Proto: netip.MustParseAddr("10.250.1.0")}}), server)
	})
	if v > 256+4 {
		t.Errorf("a server's purge of its 256 bindings visited %d entries", v)
	}
	if refused() != r0 {
		t.Error("a server's purge of the bindings it passed on was refused")
	}
	// Purged bindings in use are resolved again (incomplete entries in
	// their place): count the resolved ones.
	left := 0
	if eng.do(ctx, func() {
		eng.cache.under(netip.MustParsePrefix("10.250.1.0/24"), func(en *entry) bool {
			if en.typ == TypeCached {
				left++
			}
			return true
		})
	}) != nil {
		t.Fatal("engine stopped")
	}
	if left != 0 {
		t.Errorf("%d of the server's 256 bindings survived its purge (cache %d → %d)", left, size, eng.entryCount())
	}
}

// TestPeerLostWorkIsThePeers: an SA going down (PeerLost), and a revoked
// peer, cost that peer's entries and a lookup, not the cache. Measured
// before at 50,000 spokes: two copies of the whole cache per SA down
// (5.6 ms, 800 KB allocated at 100,000); now a handful of visits and a
// few hundred bytes, and only the peer's entries change.
func TestPeerLostWorkIsThePeers(t *testing.T) {
	const n = 50000
	eng, stop := indexHub(t, n)
	defer stop()
	ctx := context.Background()
	unique := func(i int) bool {
		proto, _ := benchSpoke(i)
		u := false
		eng.do(ctx, func() {
			en := eng.cache.get(hostPrefix(proto))
			u = en != nil && en.flags&FlagUnique != 0
		})
		return u
	}

	visited := func() int {
		v := 0
		if eng.do(ctx, func() { v = eng.cache.visited }) != nil {
			t.Fatal("engine stopped")
		}
		return v
	}

	// Spoke 3's SA goes down: its unique binding is freed, spoke 4's not.
	_, nbma := benchSpoke(3)
	before := visited()
	if err := eng.PeerLost(ctx, nbma, "test"); err != nil {
		t.Fatal(err)
	}
	if v := visited() - before; v > 4 {
		t.Errorf("PeerLost of a spoke with 1 entry among %d visited %d", 2*n, v)
	}
	if unique(3) || !unique(4) {
		t.Errorf("after spoke 3's SA went down: spoke 3 unique %v (want false), spoke 4 %v (want true)", unique(3), unique(4))
	}

	// The SA to binding 5's NBMA address goes down: that binding goes,
	// binding 6 stays.
	p5, at5 := cachedBinding(5)
	p6, _ := cachedBinding(6)
	size := eng.entryCount()
	before = visited()
	if err := eng.PeerLost(ctx, at5, "test"); err != nil {
		t.Fatal(err)
	}
	if v := visited() - before; v > 4 {
		t.Errorf("PeerLost of a binding's peer visited %d entries", v)
	}
	eng.do(ctx, func() {
		if en := eng.cache.get(p5); en != nil && en.typ == TypeCached {
			t.Errorf("binding %s survived its peer's SA", p5)
		}
		if en := eng.cache.get(p6); en == nil || en.typ != TypeCached {
			t.Errorf("binding %s went with another peer's SA", p6)
		}
	})
	if got := eng.entryCount(); got < size-1 {
		t.Errorf("%d entries left of %d after one binding's SA went down", got, size)
	}

	// Revoking spoke 9 ends its registration and nothing else.
	_, nbma = benchSpoke(9)
	size = eng.entryCount()
	before = visited()
	gone, err := eng.Revoke(ctx, nbma, "test")
	if err != nil {
		t.Fatal(err)
	}
	if v := visited() - before; v > 4 {
		t.Errorf("Revoke of a spoke visited %d entries", v)
	}
	if gone != 1 || eng.entryCount() != size-1 {
		t.Errorf("revoking spoke 9 removed %d entries (cache %d → %d), want 1", gone, size, eng.entryCount())
	}

	// What an SA down allocates, over 200 of them: a few hundred bytes
	// each (the request to the engine), not copies of the cache (800 KB
	// at 100,000 entries before). Other goroutines' allocations count
	// too; the bound leaves room for them.
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	const k = 200
	for j := range k {
		_, nbma := benchSpoke(100 + j)
		if err := eng.PeerLost(ctx, nbma, "test"); err != nil {
			t.Fatal(err)
		}
	}
	runtime.ReadMemStats(&m1)
	if per := (m1.TotalAlloc - m0.TotalAlloc) / k; per > 16<<10 {
		t.Errorf("PeerLost allocated %d bytes per call among %d entries", per, 2*n)
	}
}

// BenchmarkPurgeForeign: a forged Purge of 10.0.0.0/8 around the hub's
// address (24 CIEs) from an unregistered source, refused, at 1,000 and
// 50,000 spokes: the time stays flat.
func BenchmarkPurgeForeign(b *testing.B) {
	for _, n := range []int{1000, 50000} {
		b.Run(fmt.Sprintf("spokes=%d", n), func(b *testing.B) {
			eng, stop := indexHub(b, n)
			defer stop()
			cies := aroundHub()
			src := netip.MustParseAddr("10.200.0.9")
			b.ReportAllocs()
			b.ResetTimer()
			eng.do(context.Background(), func() {
				for j := range b.N {
					from := netip.AddrFrom4([4]byte{100, 64 + byte(j>>16), byte(j >> 8), byte(j)})
					eng.handlePacket(purgeFrom(from, src, uint32(j+1), cies), from)
				}
			})
			b.StopTimer() // the engine's stop (its 2n entries) is not the purge's
		})
	}
}

// BenchmarkPeerLost: one SA going down (Engine.PeerLost, through the
// engine's request channel) at 1,000 and 50,000 spokes: the time stays
// flat.
func BenchmarkPeerLost(b *testing.B) {
	for _, n := range []int{1000, 50000} {
		b.Run(fmt.Sprintf("spokes=%d", n), func(b *testing.B) {
			eng, stop := indexHub(b, n)
			defer stop()
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for j := range b.N {
				_, nbma := benchSpoke(j % n)
				if err := eng.PeerLost(ctx, nbma, "bench"); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer() // the engine's stop (its 2n entries) is not PeerLost's
		})
	}
}
