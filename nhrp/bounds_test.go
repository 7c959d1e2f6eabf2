package nhrp

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// boundsHub runs a hub over an in-memory tunnel with limits; replies
// holds the Registration Replies' CIE codes by destination.
type boundsHub struct {
	eng *Engine
	tun *benchTun
	mu  sync.Mutex
	// codes are the CIE codes of the Registration Replies and errs the
	// Error Indication codes sent, by destination.
	codes map[netip.Addr][]wire.CIECode
	errs  map[netip.Addr][]wire.ErrorCode
}

func newBoundsHub(t *testing.T, l Limits, auth Authorizer) *boundsHub {
	t.Helper()
	h := &boundsHub{codes: map[netip.Addr][]wire.CIECode{}, errs: map[netip.Addr][]wire.ErrorCode{}}
	hub := netip.MustParseAddr("10.0.0.1")
	h.tun = newBenchTun(netip.PrefixFrom(hub, 8), netip.MustParseAddr("192.0.2.1"), 64)
	h.tun.onSend = func(b []byte, to netip.Addr) {
		p, err := wire.Decode(b)
		if err != nil {
			return
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		switch p.Type {
		case wire.TypeRegistrationReply:
			for _, c := range p.CIEs {
				h.codes[to] = append(h.codes[to], c.Code)
			}
		case wire.TypeErrorIndication:
			h.errs[to] = append(h.errs[to], p.ErrorCode)
		}
	}
	eng, err := New(Config{Role: RoleHub, Limits: l}, Deps{Tunnel: h.tun, Authorizer: auth})
	if err != nil {
		t.Fatal(err)
	}
	h.eng = eng
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { eng.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); h.tun.close(); <-done })
	if err := eng.waitRunning(ctx); err != nil {
		t.Fatal(err)
	}
	return h
}

// register sends spoke i's registration and waits for the engine to
// handle it.
func (h *boundsHub) register(i int) {
	_, nbma := benchSpoke(i)
	h.tun.deliver(benchRegistration(i, netip.MustParseAddr("10.0.0.1"), uint32(i+1), 600), nbma)
	synctest.Wait()
}

func (h *boundsHub) lastCode(t *testing.T, i int) wire.CIECode {
	t.Helper()
	_, nbma := benchSpoke(i)
	h.mu.Lock()
	defer h.mu.Unlock()
	c := h.codes[nbma]
	if len(c) == 0 {
		t.Fatalf("spoke %d got no Registration Reply", i)
	}
	return c[len(c)-1]
}

// TestCacheLimit: resolved bindings are evicted, oldest first, for new
// registrations; a full cache of registrations refuses the next one with
// code 5 (insufficient resources), counted, while refreshes of the ones
// there are still answered with success.
func TestCacheLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newBoundsHub(t, Limits{MaxEntries: 5}, acceptAll{})
		// The hub's own entry, two resolved bindings, two registrations.
		h.eng.do(t.Context(), func() {
			for _, a := range []string{"10.9.0.1", "10.9.0.2"} {
				h.eng.installBinding(netip.MustParsePrefix(a+"/32"), netip.MustParseAddr("203.0.113.1"), netip.Addr{},
					netip.MustParseAddr("203.0.113.1"), 0, time.Hour, 0)
			}
		})
		h.register(0)
		h.register(1)
		h.register(2) // cache full: evicts 10.9.0.1, the oldest binding
		gauges := h.eng.Gauges()
		if gauges.Entries["cached"] != 1 || gauges.Entries["dynamic"] != 3 {
			t.Fatalf("after one eviction: %v", gauges.Entries)
		}
		h.eng.do(t.Context(), func() {
			if h.eng.cache.get(netip.MustParsePrefix("10.9.0.1/32")) != nil || h.eng.cache.get(netip.MustParsePrefix("10.9.0.2/32")) == nil {
				t.Error("the newest binding was evicted, not the oldest")
			}
		})
		h.register(3) // evicts 10.9.0.2
		h.register(4) // only registrations left: refused
		if c := h.lastCode(t, 4); c != wire.CIEInsufficientResources {
			t.Errorf("registration beyond the limit: code %v, want %v", c, wire.CIEInsufficientResources)
		}
		h.register(0) // a refresh needs no room
		if c := h.lastCode(t, 0); c != wire.CIESuccess {
			t.Errorf("refresh in a full cache: code %v", c)
		}
		tr, _ := h.eng.Traffic(t.Context())
		if tr.Limited["evicted"] != 2 || tr.Limited["cache-full"] != 1 {
			t.Errorf("limited %v, want 2 evicted and 1 cache-full", tr.Limited)
		}
		if g := h.eng.Gauges(); g.Entries["dynamic"] != 4 || g.Entries["cached"] != 0 || g.Entries["local"] != 1 {
			t.Errorf("gauges %v", g.Entries)
		}
	})
}

// TestCIELimit: a registration with more CIEs than MaxCIEs is refused
// whole with an Error Indication (protocol error) and counted; none of its
// CIEs is bound.
func TestCIELimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newBoundsHub(t, Limits{MaxCIEs: 4}, acceptAll{})
		from := netip.MustParseAddr("198.51.100.7")
		p := &wire.Packet{Type: wire.TypeRegistrationRequest, HopCount: 255, RequestID: 9,
			SrcNBMA: from, SrcProto: netip.MustParseAddr("10.7.0.1"), DstProto: netip.MustParseAddr("10.0.0.1")}
		for i := range 5 {
			p.CIEs = append(p.CIEs, wire.CIE{PrefixLen: 32, Proto: netip.AddrFrom4([4]byte{10, 7, 0, byte(i + 1)})})
		}
		b, _ := p.MarshalBinary()
		h.tun.deliver(b, from)
		synctest.Wait()
		p.CIEs = p.CIEs[:4]
		b, _ = p.MarshalBinary()
		h.tun.deliver(b, from)
		synctest.Wait()
		h.mu.Lock()
		if got := h.errs[from]; len(got) != 1 || got[0] != wire.ErrorProtocol {
			t.Errorf("error indications %v, want one protocol error", got)
		}
		if got := h.codes[from]; len(got) != 4 {
			t.Errorf("the packet within the limit got %d CIE answers, want 4", len(got))
		}
		h.mu.Unlock()
		tr, _ := h.eng.Traffic(t.Context())
		if tr.Limited["too-many-cies"] != 1 || tr.Dropped["too-many-cies"] != 1 {
			t.Errorf("counted %v / %v", tr.Limited, tr.Dropped)
		}
	})
}

// slowAuth holds every authorisation until released.
type slowAuth struct{ release chan struct{} }

func (a slowAuth) Authorize(ctx context.Context, _ Registration) Verdict {
	select {
	case <-a.release:
	case <-ctx.Done():
	}
	return Verdict{}
}

// TestHookAndPendingLimits: with two hook calls at most, a third
// registration waiting for the Authorizer is refused with code 5 at once
// (hooks-full); with one pending authorisation at most, a second is
// refused (pending-full). Released, the first ones are accepted.
func TestHookAndPendingLimits(t *testing.T) {
	for _, c := range []struct {
		name  string
		l     Limits
		limit string
	}{
		{"hooks", Limits{MaxHooks: 2}, "hooks-full"},
		{"pending", Limits{MaxPending: 2}, "pending-full"},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				a := slowAuth{release: make(chan struct{})}
				h := newBoundsHub(t, c.l, a)
				h.register(0)
				h.register(1)
				h.register(2)
				if code := h.lastCode(t, 2); code != wire.CIEInsufficientResources {
					t.Errorf("third registration: code %v", code)
				}
				tr, _ := h.eng.Traffic(t.Context())
				if tr.Limited[c.limit] != 1 {
					t.Errorf("limited %v, want one %s", tr.Limited, c.limit)
				}
				close(a.release)
				synctest.Wait()
				for i := range 2 {
					if code := h.lastCode(t, i); code != wire.CIESuccess {
						t.Errorf("spoke %d: code %v", i, code)
					}
				}
			})
		})
	}
}

// TestSourceRateLimit: one source sending far beyond its rate is held to
// its burst and rate; another source at once is not held at all.
func TestSourceRateLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newBoundsHub(t, Limits{SourceRate: 10, SourceBurst: 20}, acceptAll{})
		for range 100 {
			h.register(0)
		}
		h.register(1)
		time.Sleep(time.Second) // 10 more tokens
		for range 100 {
			h.register(0)
		}
		_, n0 := benchSpoke(0)
		_, n1 := benchSpoke(1)
		h.mu.Lock()
		got0, got1 := len(h.codes[n0]), len(h.codes[n1])
		h.mu.Unlock()
		if got0 != 30 || got1 != 1 {
			t.Errorf("answered %d of spoke 0's 200 (want 20 + 10) and %d of spoke 1's 1", got0, got1)
		}
		tr, _ := h.eng.Traffic(t.Context())
		if tr.Limited["rate-limited"] != 170 {
			t.Errorf("rate-limited %d, want 170", tr.Limited["rate-limited"])
		}
	})
}

// TestSourceLimiterBounded: the rate limit's table never holds more than
// its maximum; sources whose bucket is full again make room for new ones,
// and new ones beyond busy ones share the overflow bucket.
func TestSourceLimiterBounded(t *testing.T) {
	var s sourceLimiter
	now := time.Unix(0, 0)
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}) }
	untracked := 0
	for i := range 1000 {
		if _, u := s.allow(now, addr(i), 1, 2, 100); u {
			untracked++
		}
	}
	if len(s.m) != 100 || untracked != 900 {
		t.Fatalf("busy sources: %d tracked, %d untracked; want 100 and 900", len(s.m), untracked)
	}
	now = now.Add(2 * time.Second) // every bucket full again
	for i := 1000; i < 1100; i++ {
		if _, u := s.allow(now, addr(i), 1, 2, 100); u {
			t.Fatalf("source %d untracked though idle ones could go", i)
		}
	}
	if _, u := s.allow(now, addr(1100), 1, 2, 100); !u {
		t.Error("a source tracked beyond the maximum with every tracked one busy")
	}
	if len(s.m) != 100 || len(s.order) > 200 {
		t.Errorf("table %d, order %d", len(s.m), len(s.order))
	}
}

// TestRedirectLimitReset: a purge of a prefix clears the redirect limit
// of the pairs to and from it (a pair held back answers at once after the
// purge; another pair stays held back), the purged prefixes are forgotten
// once a bucket has refilled since, and the pairs' table is bounded.
func TestRedirectLimitReset(t *testing.T) {
	var l limits
	l.init(100)
	now := time.Unix(1000, 0)
	a := netip.MustParseAddr
	held := func(src, dst netip.Addr, at time.Time) int {
		n := 0
		for range 5 {
			if l.allowRedirect(at, src, dst) {
				n++
			}
		}
		return n
	}
	if n := held(a("10.0.1.1"), a("10.0.2.1"), now); n != redirectBurst {
		t.Fatalf("%d indications at once, want the burst of %d", n, redirectBurst)
	}
	held(a("10.0.3.1"), a("10.0.4.1"), now)
	l.forgetRedirect(netip.MustParsePrefix("10.0.2.0/24"), now.Add(time.Millisecond))
	if !l.allowRedirect(now.Add(2*time.Millisecond), a("10.0.1.1"), a("10.0.2.1")) {
		t.Error("the pair to the purged prefix is still held back")
	}
	if l.allowRedirect(now.Add(2*time.Millisecond), a("10.0.3.1"), a("10.0.4.1")) {
		t.Error("another pair was let through")
	}
	l.forgetRedirect(netip.MustParsePrefix("10.0.9.9/32"), now.Add(redirectRefill+time.Second))
	if l.resets.Size() != 1 || len(l.resetOrder) != 1 {
		t.Errorf("resets kept: %d (order %d), want only the new one", l.resets.Size(), len(l.resetOrder))
	}
	for i := range 3 * maxRedirectPairs {
		l.allowRedirect(now, netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), netip.AddrFrom4([4]byte{10, 2, byte(i >> 16), byte(i)}))
	}
	if len(l.redirect.m) > maxRedirectPairs || len(l.redirect.order) > 2*maxRedirectPairs {
		t.Errorf("redirect table %d (order %d), over %d", len(l.redirect.m), len(l.redirect.order), maxRedirectPairs)
	}
}

// TestPurgePrefix: a Purge of a prefix from the node its bindings were
// learned from removes the bindings under that prefix (found in the trie,
// not by a walk of the cache) and only those; the gauges follow.
func TestPurgePrefix(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newBoundsHub(t, Limits{}, acceptAll{})
		owner := netip.MustParseAddr("203.0.113.5")
		h.eng.do(t.Context(), func() {
			for _, a := range []string{"10.9.1.1", "10.9.1.2", "10.9.2.1"} {
				h.eng.installBinding(netip.MustParsePrefix(a+"/32"), owner, netip.Addr{}, owner, 0, time.Hour, 0)
			}
		})
		p := &wire.Packet{Type: wire.TypePurgeRequest, HopCount: 255, RequestID: 7, Flags: wire.PurgeFlagN,
			SrcNBMA: owner, SrcProto: netip.MustParseAddr("10.9.0.1"), DstProto: netip.MustParseAddr("10.0.0.1"),
			CIEs: []wire.CIE{{PrefixLen: 24, Proto: netip.MustParseAddr("10.9.1.0")}}}
		b, _ := p.MarshalBinary()
		h.tun.deliver(b, owner)
		synctest.Wait()
		h.eng.do(t.Context(), func() {
			for a, want := range map[string]bool{"10.9.1.1": false, "10.9.1.2": false, "10.9.2.1": true} {
				// A purged binding made just now counts as in use: it is
				// resolved again (an incomplete entry in its place).
				en := h.eng.cache.get(netip.MustParsePrefix(a + "/32"))
				if got := en != nil && en.typ == TypeCached; got != want {
					t.Errorf("%s bound: %v, want %v", a, got, want)
				}
			}
		})
		if g := h.eng.Gauges(); g.Entries["cached"] != 1 {
			t.Errorf("cached entries: %d, want 1", g.Entries["cached"])
		}
	})
}

// TestKeyLimiterForgetsIdle: keys whose buckets are full again are
// forgotten as new ones come, so the table holds the keys that sent
// lately, not every key that ever sent; a key still in debt stays
// tracked (and limited) meanwhile.
func TestKeyLimiterForgetsIdle(t *testing.T) {
	var s keyLimiter[int]
	const rate, burst, max = 100, 200, 100000
	now := time.Unix(1000, 0)
	denied := 0
	for range 300 {
		if ok, _ := s.allow(now, -1, rate, burst, max); !ok {
			denied++
		}
	}
	if denied != 100 {
		t.Fatalf("the flooding key: %d of 300 denied, want 100", denied)
	}
	for k := range 10000 {
		now = now.Add(100 * time.Microsecond)
		if ok, untracked := s.allow(now, k, rate, burst, max); !ok || untracked {
			t.Fatalf("key %d: allowed %v, untracked %v", k, ok, untracked)
		}
	}
	// 1 s later the flooding key has 100 tokens back, not a full bucket.
	if len(s.m) > 200 {
		t.Errorf("%d keys tracked after 10,000 that sent one packet each, 0.1 ms apart", len(s.m))
	}
	if _, ok := s.m[-1]; !ok {
		t.Error("the flooding key, still in debt, was forgotten")
	}
}
