package userspace

import (
	"net/netip"
	"time"
)

// HoldQueue keeps packets whose next hop has no neighbour entry yet, like
// the kernel's unresolved-neighbour queue: a few packets per next hop, a
// bound on the total, and an age limit. It is not safe for concurrent use.
type HoldQueue struct {
	perHop   int
	maxTotal int
	maxAge   time.Duration
	total    int
	hops     map[netip.Addr]*heldHop
}

type heldHop struct {
	since time.Time
	pkts  [][]byte
}

// NewHoldQueue returns a queue holding at most perHop packets per next hop
// and maxTotal overall, each for at most maxAge.
func NewHoldQueue(perHop, maxTotal int, maxAge time.Duration) *HoldQueue {
	return &HoldQueue{perHop: perHop, maxTotal: maxTotal, maxAge: maxAge, hops: map[netip.Addr]*heldHop{}}
}

// Add queues a copy of pkt for next hop nh. When the hop's queue is full
// the oldest packet is dropped (the kernel does the same); when the whole
// queue is full the new packet is. It returns the number of packets
// dropped (0 or 1).
func (q *HoldQueue) Add(nh netip.Addr, pkt []byte, now time.Time) int {
	h := q.hops[nh]
	if h == nil {
		if q.total >= q.maxTotal {
			return 1
		}
		h = &heldHop{since: now}
		q.hops[nh] = h
	}
	dropped := 0
	if len(h.pkts) >= q.perHop {
		h.pkts[0] = nil
		h.pkts = h.pkts[1:]
		q.total--
		dropped = 1
	} else if q.total >= q.maxTotal {
		return 1
	}
	h.pkts = append(h.pkts, append([]byte(nil), pkt...))
	q.total++
	return dropped
}

// Take removes and returns the packets held for nh, oldest first.
func (q *HoldQueue) Take(nh netip.Addr) [][]byte {
	h := q.hops[nh]
	if h == nil {
		return nil
	}
	delete(q.hops, nh)
	q.total -= len(h.pkts)
	return h.pkts
}

// Expire drops the packets of every next hop that has waited longer than
// the age limit and returns how many were dropped.
func (q *HoldQueue) Expire(now time.Time) int {
	n := 0
	for nh, h := range q.hops {
		if now.Sub(h.since) > q.maxAge {
			n += len(h.pkts)
			q.total -= len(h.pkts)
			delete(q.hops, nh)
		}
	}
	return n
}

// Len returns the number of packets held.
func (q *HoldQueue) Len() int { return q.total }

// Hops returns the number of next hops with held packets.
func (q *HoldQueue) Hops() int { return len(q.hops) }
