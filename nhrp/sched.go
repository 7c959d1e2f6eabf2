package nhrp

import (
	"container/heap"
	"time"
)

// timer is a scheduled call on the engine's goroutine. Stop cancels it.
type timer struct {
	when  time.Time
	seq   uint64
	fn    func()
	index int // in the heap; -1 once due or stopped
	dead  bool
	s     *sched
}

// Stop cancels the timer; it is safe on a nil, fired or stopped timer.
func (t *timer) Stop() {
	if t == nil {
		return
	}
	t.dead = true
	if t.index >= 0 {
		heap.Remove(&t.s.h, t.index)
		t.index = -1
	}
}

// sched is a min-heap of timers, owned by the engine's goroutine. One
// time.Timer wakes the loop for the earliest.
type sched struct {
	h   timerHeap
	seq uint64
}

// after schedules fn to run d from now.
func (s *sched) after(now time.Time, d time.Duration, fn func()) *timer {
	return s.at(now.Add(d), fn)
}

// at schedules fn to run at when.
func (s *sched) at(when time.Time, fn func()) *timer {
	s.seq++
	t := &timer{when: when, seq: s.seq, fn: fn, s: s}
	heap.Push(&s.h, t)
	return t
}

// next returns the earliest pending deadline.
func (s *sched) next() (time.Time, bool) {
	if len(s.h) == 0 {
		return time.Time{}, false
	}
	return s.h[0].when, true
}

// runDue runs every timer due at now, in deadline order. Timers added by
// the calls run in a later round.
func (s *sched) runDue(now time.Time) {
	var due []*timer
	for len(s.h) > 0 && !s.h[0].when.After(now) {
		t := heap.Pop(&s.h).(*timer)
		t.index = -1
		due = append(due, t)
	}
	for _, t := range due {
		if !t.dead {
			t.dead = true
			t.fn()
		}
	}
}

// len reports how many timers are pending.
func (s *sched) len() int { return len(s.h) }

type timerHeap []*timer

func (h timerHeap) Len() int { return len(h) }
func (h timerHeap) Less(i, j int) bool {
	if h[i].when.Equal(h[j].when) {
		return h[i].seq < h[j].seq
	}
	return h[i].when.Before(h[j].when)
}
func (h timerHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i]; h[i].index = i; h[j].index = j }
func (h *timerHeap) Push(x any)   { t := x.(*timer); t.index = len(*h); *h = append(*h, t) }
func (h *timerHeap) Pop() any {
	old := *h
	n := len(old)
	t := old[n-1]
	old[n-1] = nil
	*h = old[:n-1]
	t.index = -1
	return t
}
