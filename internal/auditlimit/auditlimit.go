// Package auditlimit bounds the log and audit lines written for refused
// packets: a global budget (a token bucket) in front of a per-source
// limit keyed on the sender and the check that refused it (never on the
// reason's text, which carries per-packet addresses), in a bounded table
// that evicts its oldest entry. What it holds back is counted by check,
// in total and per summary window, so that one summary line can say how
// many lines were suppressed.
package auditlimit

import (
	"container/list"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"
)

// Config sizes a Limiter; zero fields take the defaults.
type Config struct {
	// Rate is the global budget in lines a second (default 10).
	Rate float64
	// Burst is the bucket's size: lines allowed at once (default 20).
	Burst int
	// PerSource is the least time between two lines for one source and
	// check (default 1 s).
	PerSource time.Duration
	// Sources bounds the per-source table; the oldest entry goes first
	// (default 4096).
	Sources int
	// Summary is the window of the summary of suppressed lines (default
	// 10 s).
	Summary time.Duration
	// Now is the clock (default time.Now); tests inject their own.
	Now func() time.Time
}

// The defaults.
const (
	DefaultRate      = 10
	DefaultBurst     = 20
	DefaultPerSource = time.Second
	DefaultSources   = 4096
	DefaultSummary   = 10 * time.Second
)

func (c Config) withDefaults() Config {
	if c.Rate <= 0 {
		c.Rate = DefaultRate
	}
	if c.Burst <= 0 {
		c.Burst = DefaultBurst
	}
	if c.PerSource <= 0 {
		c.PerSource = DefaultPerSource
	}
	if c.Sources <= 0 {
		c.Sources = DefaultSources
	}
	if c.Summary <= 0 {
		c.Summary = DefaultSummary
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

type key struct {
	src   netip.Addr
	check string
}

type entry struct {
	key
	at time.Time // when its last line was allowed
}

// Limiter decides which refusals get a line. It is safe for concurrent
// use; every call is O(1) but for the eviction of stale entries, each of
// which was inserted by an allowed line.
type Limiter struct {
	cfg Config

	mu     sync.Mutex
	tokens float64
	filled time.Time // when tokens was last refilled
	// order holds the per-source entries, oldest line first; bySource
	// indexes it.
	order    *list.List
	bySource map[key]*list.Element
	// window counts the lines suppressed since windowStart, by check;
	// total since the start.
	window      map[string]uint64
	windowStart time.Time
	total       map[string]uint64
}

// New returns a limiter sized by cfg, its bucket full.
func New(cfg Config) *Limiter {
	cfg = cfg.withDefaults()
	return &Limiter{cfg: cfg, tokens: float64(cfg.Burst), filled: cfg.Now(), order: list.New(),
		bySource: map[key]*list.Element{}, window: map[string]uint64{}, total: map[string]uint64{}}
}

// Allow reports whether a refusal by check of a packet from src gets a
// line: none was written for src and check within PerSource, and the
// global budget has a token. A refusal that gets none is counted.
func (l *Limiter) Allow(src netip.Addr, check string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.cfg.Now()
	l.refill(now)
	k := key{src, check}
	el, seen := l.bySource[k]
	if seen && now.Sub(el.Value.(*entry).at) < l.cfg.PerSource || l.tokens < 1 {
		l.suppress(now, check)
		return false
	}
	l.tokens--
	if seen {
		el.Value.(*entry).at = now
		l.order.MoveToBack(el)
	} else {
		l.bySource[k] = l.order.PushBack(&entry{key: k, at: now})
	}
	l.evict(now)
	return true
}

// refill adds the tokens earned since the last refill, up to Burst.
func (l *Limiter) refill(now time.Time) {
	if d := now.Sub(l.filled); d > 0 {
		l.tokens = min(float64(l.cfg.Burst), l.tokens+d.Seconds()*l.cfg.Rate)
		l.filled = now
	}
}

// evict drops the entries that no longer limit anything (older than
// PerSource), then the oldest while the table is over its size.
func (l *Limiter) evict(now time.Time) {
	for front := l.order.Front(); front != nil; front = l.order.Front() {
		e := front.Value.(*entry)
		if now.Sub(e.at) < l.cfg.PerSource && l.order.Len() <= l.cfg.Sources {
			return
		}
		l.order.Remove(front)
		delete(l.bySource, e.key)
	}
}

func (l *Limiter) suppress(now time.Time, check string) {
	if len(l.window) == 0 {
		l.windowStart = now
	}
	l.window[check]++
	l.total[check]++
}

// Sources returns how many entries the per-source table holds.
func (l *Limiter) Sources() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.order.Len()
}

// Suppressed returns the lines suppressed since the start, by check.
func (l *Limiter) Suppressed() map[string]uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.total)
}

// Summary is what a window suppressed.
type Summary struct {
	// Total is the number of lines suppressed; ByCheck the same by check.
	Total   uint64
	ByCheck map[string]uint64
	// Over is the time from the first suppressed line to the summary.
	Over time.Duration
}

// String renders the summary as one line.
func (s Summary) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d refusal audit lines suppressed in the last %s: by check", s.Total, s.Over.Round(time.Second))
	for _, c := range slices.Sorted(maps.Keys(s.ByCheck)) {
		fmt.Fprintf(&b, " %s=%d", c, s.ByCheck[c])
	}
	return b.String()
}

// Due returns the summary of the current window and starts the next one
// once Summary has passed since the window's first suppressed line;
// false while it has not, or when nothing was suppressed.
func (l *Limiter) Due() (Summary, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.cfg.Now()
	if len(l.window) == 0 || now.Sub(l.windowStart) < l.cfg.Summary {
		return Summary{}, false
	}
	return l.take(now), true
}

// Flush returns the summary of the current window, however short, and
// starts the next one; false when nothing was suppressed (on stop).
func (l *Limiter) Flush() (Summary, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.window) == 0 {
		return Summary{}, false
	}
	return l.take(l.cfg.Now()), true
}

func (l *Limiter) take(now time.Time) Summary {
	s := Summary{ByCheck: l.window, Over: now.Sub(l.windowStart)}
	for _, n := range l.window {
		s.Total += n
	}
	l.window = map[string]uint64{}
	return s
}
