package auditlimit

import (
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// clock is a virtual clock the tests advance by hand.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

func newClock() *clock { return &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func addr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{100, 64 + byte(i>>16), byte(i >> 8), byte(i)})
}

// TestGlobalBudget: 50,000 refusals from 50,000 sources over 5 s of
// virtual time get at most Burst + Rate × 5 s lines; the rest are counted
// by check, and every one of the 50,000 is accounted for.
func TestGlobalBudget(t *testing.T) {
	c := newClock()
	l := New(Config{Now: c.now})
	const n = 50000
	step := 5 * time.Second / n
	allowed := 0
	for i := range n {
		if l.Allow(addr(i), "purge-not-owner") {
			allowed++
		}
		c.advance(step)
	}
	limit := DefaultBurst + int(DefaultRate*5)
	if allowed > limit || allowed < limit-1 {
		t.Errorf("%d lines for %d sources over 5 s, want %d (burst %d + %d/s × 5 s)", allowed, n, limit, DefaultBurst, DefaultRate)
	}
	if got := l.Suppressed()["purge-not-owner"]; got != uint64(n-allowed) {
		t.Errorf("suppressed %d, want %d", got, n-allowed)
	}
	if l.Sources() > DefaultBurst+DefaultRate {
		t.Errorf("the per-source table holds %d entries, want those of the last second only (≤ %d)", l.Sources(), DefaultBurst+DefaultRate)
	}
}

// TestPerSourceAndCheck: one source gets one line a second per check,
// whatever varies in what it sends; another check of the same source, or
// another source, has its own line.
func TestPerSourceAndCheck(t *testing.T) {
	c := newClock()
	l := New(Config{Now: c.now})
	a, b := addr(1), addr(2)
	want := []bool{true, false, false, true, true, false}
	got := []bool{
		l.Allow(a, "purge-not-owner"),
		l.Allow(a, "purge-not-owner"),
		l.Allow(a, "purge-not-owner"),
		l.Allow(a, "request-source"),
		l.Allow(b, "purge-not-owner"),
		l.Allow(b, "purge-not-owner"),
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("within a second (-want +got):\n%s", d)
	}
	c.advance(999 * time.Millisecond)
	if l.Allow(a, "purge-not-owner") {
		t.Error("a second line for the same source and check after 999 ms")
	}
	c.advance(time.Millisecond)
	if !l.Allow(a, "purge-not-owner") {
		t.Error("no line for the same source and check after 1 s")
	}
	if d := cmp.Diff(map[string]uint64{"purge-not-owner": 4}, l.Suppressed()); d != "" {
		t.Errorf("suppressed (-want +got):\n%s", d)
	}
}

// TestTableEvictsOldest: a table full of live entries drops its oldest
// one, never the whole table: the newest sources stay limited.
func TestTableEvictsOldest(t *testing.T) {
	c := newClock()
	l := New(Config{Now: c.now, Sources: 4, Burst: 100, Rate: 100})
	for i := range 6 {
		if !l.Allow(addr(i), "x") {
			t.Fatalf("source %d refused with tokens left", i)
		}
	}
	if l.Sources() != 4 {
		t.Fatalf("table holds %d, want 4", l.Sources())
	}
	if !l.Allow(addr(0), "x") {
		t.Error("the oldest source was not evicted")
	}
	if l.Allow(addr(5), "x") {
		t.Error("the newest source was evicted (table wiped)")
	}
}

// TestSummary: the summary comes once its window has passed, counts the
// window's suppressed lines by check, and starts afresh.
func TestSummary(t *testing.T) {
	c := newClock()
	l := New(Config{Now: c.now, Burst: 1, Rate: 1})
	l.Allow(addr(0), "a")
	for i := 1; i <= 5; i++ {
		l.Allow(addr(i), "a")
	}
	l.Allow(addr(6), "b")
	if _, ok := l.Due(); ok {
		t.Fatal("a summary before its window passed")
	}
	c.advance(10 * time.Second)
	s, ok := l.Due()
	if !ok {
		t.Fatal("no summary after 10 s")
	}
	want := Summary{Total: 6, ByCheck: map[string]uint64{"a": 5, "b": 1}, Over: 10 * time.Second}
	if d := cmp.Diff(want, s); d != "" {
		t.Errorf("summary (-want +got):\n%s", d)
	}
	if got, w := s.String(), "6 refusal audit lines suppressed in the last 10s: by check a=5 b=1"; got != w {
		t.Errorf("String() = %q, want %q", got, w)
	}
	if _, ok := l.Due(); ok {
		t.Error("a second summary of the same window")
	}
	if _, ok := l.Flush(); ok {
		t.Error("a flush with nothing suppressed since the summary")
	}
	if d := cmp.Diff(map[string]uint64{"a": 5, "b": 1}, l.Suppressed()); d != "" {
		t.Errorf("totals (-want +got):\n%s", d)
	}
}
