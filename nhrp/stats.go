package nhrp

import (
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/gaissmai/bart"

	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// stats counts packets. The counters are written by the loop and the
// reader goroutine and read by snapshots, so they are atomic.
type stats struct {
	sent, received [9]atomic.Uint64 // by wire.Type
	errSent        [16]atomic.Uint64
	errRecv        [16]atomic.Uint64
	dropped        map[string]*atomic.Uint64
	suppressed     map[string]*atomic.Uint64
	rxQueueFull    atomic.Uint64
	refused        [numRefusals]atomic.Uint64
	limited        [numLimits]atomic.Uint64
}

// Drop reasons counted in Traffic.Dropped.
var dropReasons = []string{
	"malformed", "auth", "unknown-extension", "hop-count", "loop", "not-for-us",
	"unexpected-reply", "unsupported", "refused", "peer-down", "peer-queue-full",
	"no-route", "rx-queue-full", "no-binding", "rate-limited", "too-many-cies",
}

// Suppression kinds counted in Traffic.Suppressed.
var suppressKinds = []string{"redirect", "error-indication", "max-send", "resolution", "verification"}

func (s *stats) init() {
	s.dropped = make(map[string]*atomic.Uint64)
	for _, r := range dropReasons {
		s.dropped[r] = new(atomic.Uint64)
	}
	s.suppressed = make(map[string]*atomic.Uint64)
	for _, k := range suppressKinds {
		s.suppressed[k] = new(atomic.Uint64)
	}
}

func (s *stats) drop(reason string) {
	if c := s.dropped[reason]; c != nil {
		c.Add(1)
	}
}

func (s *stats) suppress(kind string) {
	if c := s.suppressed[kind]; c != nil {
		c.Add(1)
	}
}

func (s *stats) refuse(r Refusal) {
	if r < numRefusals {
		s.refused[r].Add(1)
	}
}

func (s *stats) countSent(t wire.Type) {
	if int(t) < len(s.sent) {
		s.sent[t].Add(1)
	}
}

func (s *stats) countReceived(t wire.Type) {
	if int(t) < len(s.received) {
		s.received[t].Add(1)
	}
}

func (s *stats) countError(recv bool, code wire.ErrorCode) {
	if int(code) >= 16 {
		code = 0
	}
	if recv {
		s.errRecv[code].Add(1)
	} else {
		s.errSent[code].Add(1)
	}
}

// snapshot returns the public view.
func (s *stats) snapshot(l *limits, now time.Time) Traffic {
	t := Traffic{
		Sent: map[string]uint64{}, Received: map[string]uint64{},
		ErrorsSent: map[string]uint64{}, ErrorsReceived: map[string]uint64{},
		Dropped: map[string]uint64{}, Suppressed: map[string]uint64{}, Refused: map[string]uint64{},
		Limited: map[string]uint64{},
	}
	for l := range numLimits {
		t.Limited[l.String()] = s.limited[l].Load()
	}
	for r := RefusalNone + 1; r < numRefusals; r++ {
		t.Refused[r.String()] = s.refused[r].Load()
	}
	for ty := wire.TypeResolutionRequest; ty <= wire.TypeTrafficIndication; ty++ {
		t.Sent[ty.String()] = s.sent[ty].Load()
		t.Received[ty.String()] = s.received[ty].Load()
	}
	for c := range s.errSent {
		if n := s.errSent[c].Load(); n > 0 {
			t.ErrorsSent[wire.ErrorCode(c).String()] = n
		}
		if n := s.errRecv[c].Load(); n > 0 {
			t.ErrorsReceived[wire.ErrorCode(c).String()] = n
		}
	}
	for r, c := range s.dropped {
		t.Dropped[r] = c.Load()
	}
	t.Dropped["rx-queue-full"] += s.rxQueueFull.Load()
	for k, c := range s.suppressed {
		t.Suppressed[k] = c.Load()
	}
	t.MaxSend = l.maxSend
	t.Usage = l.usage(now)
	return t
}

// bucket is a token bucket.
type bucket struct {
	tokens float64
	last   time.Time
}

// allow takes a token if one is available; rate is tokens per second.
func (b *bucket) allow(now time.Time, rate, burst float64) bool {
	if b.last.IsZero() {
		b.tokens = burst
	} else {
		b.tokens += now.Sub(b.last).Seconds() * rate
		if b.tokens > burst {
			b.tokens = burst
		}
	}
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true
	}
	return false
}

// limits holds the engine's rate limits (loop-owned).
type limits struct {
	maxSend int
	send    bucket
	// stranger is the share of the send limit of packets to peers no
	// entry uses.
	stranger bucket
	// window counts packets sent in the current and previous second for
	// the usage figure.
	winStart  time.Time
	winCount  int
	lastCount int
	redirect  keyLimiter[[2]netip.Addr] // per (source, destination), bounded
	// resets are the prefixes whose redirect limits a purge cleared, and
	// when (kept while a bucket could still be empty: redirectRefill).
	resets     bart.Table[time.Time]
	resetOrder []netip.Prefix
	errInd     sourceLimiter // per destination, bounded
	errIndAll  bucket
	lastPruned time.Time

	// logged is when a warning was last logged per peer and reason.
	logged map[logKey]time.Time
}

// logKey identifies a warning for its rate limit: the peer and the reason.
type logKey struct {
	peer   netip.Addr
	reason string
}

// maxLogged bounds the warnings' rate-limit table; beyond it a new peer
// and reason is not logged until the table is pruned (it is counted all
// the same).
const maxLogged = 4096

func (l *limits) init(maxSend int) {
	l.maxSend = maxSend
	l.logged = make(map[logKey]time.Time)
}

// allowLog reports whether a warning about peer for reason may be logged
// now: one a minute per peer and reason.
func (l *limits) allowLog(now time.Time, peer netip.Addr, reason string) bool {
	l.prune(now)
	k := logKey{peer, reason}
	if last, ok := l.logged[k]; ok && now.Sub(last) < time.Minute {
		return false
	}
	if _, ok := l.logged[k]; !ok && len(l.logged) >= maxLogged {
		return false
	}
	l.logged[k] = now
	return true
}

// allowSend applies the global send limit and counts the packet; a
// packet to a stranger (a peer no entry uses) must also fit in half of it.
func (l *limits) allowSend(now time.Time, known bool) bool {
	if !known && !l.stranger.allow(now, float64(l.maxSend)/2, float64(l.maxSend)/2) {
		return false
	}
	if !l.send.allow(now, float64(l.maxSend), float64(l.maxSend)) {
		return false
	}
	if now.Sub(l.winStart) >= time.Second {
		if now.Sub(l.winStart) < 2*time.Second {
			l.lastCount = l.winCount
		} else {
			l.lastCount = 0
		}
		l.winStart, l.winCount = now, 0
	}
	l.winCount++
	return true
}

// usage is the share of the send limit used over the last second, in
// percent.
func (l *limits) usage(now time.Time) int {
	n := l.lastCount
	if now.Sub(l.winStart) < time.Second && l.winCount > n {
		n = l.winCount
	}
	if now.Sub(l.winStart) >= 2*time.Second {
		n = 0
	}
	if l.maxSend == 0 {
		return 0
	}
	return n * 100 / l.maxSend
}

// Redirect limits: per (source, destination) pair, a first indication at
// once, then one every redirectInterval.
const (
	redirectInterval = 5 * time.Second
	redirectBurst    = 2
)

// allowRedirect applies the per-pair Traffic Indication limit; a pair
// whose source or destination a purge cleared since its last indication
// starts afresh.
func (l *limits) allowRedirect(now time.Time, src, dst netip.Addr) bool {
	l.prune(now)
	k := [2]netip.Addr{src, dst}
	if b, ok := l.redirect.m[k]; ok && (l.resetSince(src, b.last) || l.resetSince(dst, b.last)) {
		l.redirect.reset(k)
	}
	ok, _ := l.redirect.allow(now, k, 1/redirectInterval.Seconds(), redirectBurst, maxRedirectPairs)
	return ok
}

// maxRedirectPairs bounds the pairs the redirect limit tracks.
const maxRedirectPairs = 65536

// redirectRefill is how long an empty redirect bucket takes to fill: a
// reset older than that changes nothing.
const redirectRefill = redirectBurst * redirectInterval

// maxResets bounds the purged prefixes remembered for the redirect limit.
const maxResets = 4096

// resetSince reports whether a purge cleared a's redirect limits after t.
func (l *limits) resetSince(a netip.Addr, t time.Time) bool {
	if l.resets.Size() == 0 {
		return false
	}
	for _, at := range l.resets.Supernets(netip.PrefixFrom(a, a.BitLen())) {
		if at.After(t) {
			return true
		}
	}
	return false
}

// forgetRedirect clears the limit of the pairs to and from a prefix
// (after a purge, a new shortcut attempt may be needed at once): it is
// remembered for redirectRefill, so it costs a trie insertion, not a walk
// of every pair.
func (l *limits) forgetRedirect(dst netip.Prefix, now time.Time) {
	// The oldest resets go once a bucket has refilled since, or beyond
	// maxResets.
	for len(l.resetOrder) > 0 {
		p := l.resetOrder[0]
		at, ok := l.resets.Get(p)
		if ok && now.Sub(at) < redirectRefill && len(l.resetOrder) < maxResets {
			break
		}
		l.resetOrder = l.resetOrder[1:]
		if ok {
			l.resets.Delete(p)
		}
	}
	dst = dst.Masked()
	if _, ok := l.resets.Get(dst); !ok {
		l.resetOrder = append(l.resetOrder, dst)
	}
	l.resets.Insert(dst, now)
}

// allowErrInd applies the Error Indication limits: per destination one a
// second (burst 3), and 50 a second in all.
func (l *limits) allowErrInd(now time.Time, to netip.Addr) bool {
	l.prune(now)
	ok, _ := l.errInd.allow(now, to, 1, 3, maxErrIndDests)
	return ok && l.errIndAll.allow(now, 50, 50)
}

// maxErrIndDests bounds the destinations the Error Indication limit
// tracks: one whose bucket is full again is forgotten first, and beyond
// them new destinations share one bucket (within the global 50 a second
// anyway).
const maxErrIndDests = 4096

// prune drops idle per-peer buckets once a minute.
func (l *limits) prune(now time.Time) {
	if now.Sub(l.lastPruned) < time.Minute {
		return
	}
	l.lastPruned = now
	for k, last := range l.logged {
		if now.Sub(last) >= time.Minute {
			delete(l.logged, k)
		}
	}
}
