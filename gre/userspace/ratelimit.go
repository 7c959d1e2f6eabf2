package userspace

import (
	"net/netip"
	"time"
)

// MissLimiter decides which neighbour misses become events: at most one
// per next hop per interval (the kernel solicits once per retrans_time) and
// at most burst events per interval overall, so a scan of a large prefix
// cannot flood the control plane. It is not safe for concurrent use.
type MissLimiter struct {
	interval time.Duration
	burst    int
	last     map[netip.Addr]time.Time
	winStart time.Time
	inWin    int
}

// NewMissLimiter returns a limiter allowing one event per next hop per
// interval and burst events per interval in total.
func NewMissLimiter(interval time.Duration, burst int) *MissLimiter {
	return &MissLimiter{interval: interval, burst: burst, last: map[netip.Addr]time.Time{}}
}

// Allow reports whether a miss for nh at time now becomes an event.
func (l *MissLimiter) Allow(nh netip.Addr, now time.Time) bool {
	if t, ok := l.last[nh]; ok && now.Sub(t) < l.interval {
		return false
	}
	if now.Sub(l.winStart) >= l.interval {
		l.winStart, l.inWin = now, 0
	}
	if l.inWin >= l.burst {
		return false
	}
	l.inWin++
	l.last[nh] = now
	if len(l.last) > 4*l.burst+1024 {
		l.gc(now)
	}
	return true
}

// Forget clears the state of nh (its neighbour entry appeared).
func (l *MissLimiter) Forget(nh netip.Addr) { delete(l.last, nh) }

func (l *MissLimiter) gc(now time.Time) {
	for k, t := range l.last {
		if now.Sub(t) >= l.interval {
			delete(l.last, k)
		}
	}
}
