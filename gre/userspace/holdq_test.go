package userspace

import (
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func TestHoldQueue(t *testing.T) {
	q := NewHoldQueue(2, 3, time.Second)
	a, b, c := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3")
	if d := q.Add(a, []byte{1}, t0); d != 0 {
		t.Fatalf("drop on first add")
	}
	q.Add(a, []byte{2}, t0)
	// per-hop limit: the oldest goes
	if d := q.Add(a, []byte{3}, t0); d != 1 {
		t.Fatalf("per-hop overflow dropped %d, want 1", d)
	}
	q.Add(b, []byte{4}, t0.Add(800*time.Millisecond))
	// total limit: a new hop cannot get in
	if d := q.Add(c, []byte{5}, t0); d != 1 || q.Len() != 3 {
		t.Fatalf("total overflow dropped %d, len %d", d, q.Len())
	}
	if diff := cmp.Diff([][]byte{{2}, {3}}, q.Take(a)); diff != "" {
		t.Errorf("Take(a) (-want +got):\n%s", diff)
	}
	if q.Take(a) != nil || q.Len() != 1 || q.Hops() != 1 {
		t.Fatalf("after take: len %d hops %d", q.Len(), q.Hops())
	}
	// the packet is a copy
	buf := []byte{9}
	q.Add(c, buf, t0)
	buf[0] = 0
	if got := q.Take(c); got[0][0] != 9 {
		t.Fatalf("held packet aliases the caller's buffer")
	}
	q.Add(c, []byte{6}, t0)
	if n := q.Expire(t0.Add(1500 * time.Millisecond)); n != 1 {
		t.Fatalf("Expire dropped %d, want 1 (c is older than a second, b is not)", n)
	}
	if q.Len() != 1 || q.Take(b) == nil {
		t.Fatalf("b should remain")
	}
}

// TestHoldQueueRandom drives the queue and a naive model with the same
// seeded operations.
func TestHoldQueueRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	q := NewHoldQueue(3, 10, time.Second)
	type held struct {
		since time.Time
		pkts  []byte
	}
	model := map[netip.Addr]*held{}
	total := 0
	now := t0
	for i := 0; i < 5000; i++ {
		nh := netip.AddrFrom4([4]byte{10, 0, 0, byte(r.IntN(6))})
		now = now.Add(time.Duration(r.IntN(200)) * time.Millisecond)
		switch r.IntN(3) {
		case 0, 1:
			v := byte(r.IntN(256))
			got := q.Add(nh, []byte{v}, now)
			want := 0
			h := model[nh]
			switch {
			case h == nil && total >= 10:
				want = 1
			case h == nil:
				model[nh] = &held{since: now, pkts: []byte{v}}
				total++
			case len(h.pkts) >= 3:
				h.pkts = append(h.pkts[1:], v)
				want = 1
			case total >= 10:
				want = 1
			default:
				h.pkts = append(h.pkts, v)
				total++
			}
			if got != want {
				t.Fatalf("step %d: Add dropped %d, model %d", i, got, want)
			}
		case 2:
			var got []byte
			for _, p := range q.Take(nh) {
				got = append(got, p[0])
			}
			var want []byte
			if h := model[nh]; h != nil {
				want = h.pkts
				total -= len(h.pkts)
				delete(model, nh)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Fatalf("step %d: Take (-model +got):\n%s", i, diff)
			}
		}
		if r.IntN(10) == 0 {
			n := 0
			for k, h := range model {
				if now.Sub(h.since) > time.Second {
					n += len(h.pkts)
					total -= len(h.pkts)
					delete(model, k)
				}
			}
			if got := q.Expire(now); got != n {
				t.Fatalf("step %d: Expire %d, model %d", i, got, n)
			}
		}
		if q.Len() != total {
			t.Fatalf("step %d: Len %d, model %d", i, q.Len(), total)
		}
	}
}

func TestMissLimiter(t *testing.T) {
	l := NewMissLimiter(time.Second, 3)
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	steps := []struct {
		nh   netip.Addr
		at   time.Duration
		want bool
	}{
		{a, 0, true},
		{a, 100 * time.Millisecond, false}, // same hop within the interval
		{b, 200 * time.Millisecond, true},
		{a, 999 * time.Millisecond, false},
		{a, 1000 * time.Millisecond, true}, // interval over
	}
	for i, s := range steps {
		if got := l.Allow(s.nh, t0.Add(s.at)); got != s.want {
			t.Fatalf("step %d: Allow(%s, +%v) = %v", i, s.nh, s.at, got)
		}
	}
	l.Forget(a)
	if !l.Allow(a, t0.Add(1100*time.Millisecond)) {
		t.Fatal("Forget did not reset the hop")
	}
	// global burst: 3 per interval, whatever the hops
	g := NewMissLimiter(time.Second, 3)
	allowed := 0
	for i := 0; i < 100; i++ {
		if g.Allow(netip.AddrFrom4([4]byte{10, 1, 0, byte(i)}), t0.Add(time.Duration(i)*time.Millisecond)) {
			allowed++
		}
	}
	if allowed != 3 {
		t.Fatalf("burst allowed %d, want 3", allowed)
	}
	if !g.Allow(netip.MustParseAddr("10.2.0.1"), t0.Add(time.Second)) {
		t.Fatal("next window refused")
	}
}

func TestMissLimiterBoundedMemory(t *testing.T) {
	l := NewMissLimiter(time.Millisecond, 10)
	for i := 0; i < 100000; i++ {
		l.Allow(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), t0.Add(time.Duration(i)*time.Millisecond))
	}
	if len(l.last) > 4*10+1024+1 {
		t.Fatalf("limiter keeps %d hops", len(l.last))
	}
}

func TestPMTUTable(t *testing.T) {
	var p pmtuTable
	a := netip.MustParseAddr("192.0.2.1")
	if p.get(a, t0) != 0 {
		t.Fatal("empty table has an entry")
	}
	p.set(a, 1400, t0.Add(time.Minute))
	if got := p.get(a, t0); got != 1400 {
		t.Fatalf("get = %d", got)
	}
	if got := p.get(a, t0.Add(2*time.Minute)); got != 0 {
		t.Fatalf("expired entry returned %d", got)
	}
	p.expire(t0.Add(2 * time.Minute))
	if m := p.m.Load(); len(*m) != 0 {
		t.Fatalf("expire left %v", *m)
	}
}
