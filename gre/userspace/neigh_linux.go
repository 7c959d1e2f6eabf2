package userspace

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/opendmvpn/dmvpn/gre"
)

// lookupNeigh returns the entry for a tunnel next hop, or nil.
func (d *Device) lookupNeigh(nh netip.Addr) *neighbor {
	return d.neigh.get(nh)
}

// SetNeighbor adds or replaces a neighbour entry and sends the packets
// held for that next hop.
func (d *Device) SetNeighbor(ctx context.Context, n gre.Neighbor) error {
	if err := d.check(ctx); err != nil {
		return err
	}
	if !n.Proto.IsValid() || !n.NBMA.Is4() {
		return fmt.Errorf("userspace: neighbour %v → %v: need a tunnel address and an IPv4 NBMA address", n.Proto, n.NBMA)
	}
	n.Proto = n.Proto.Unmap()
	n.LastUsed = time.Time{}
	nb := &neighbor{n: n, nbma4: n.NBMA.As4(), peer: d.stats.Peer(n.NBMA)}
	if prev := d.neigh.set(n.Proto, nb); prev != nil {
		nb.lastUsed.Store(prev.lastUsed.Load())
	}

	d.holdMu.Lock()
	held := d.hold.Take(n.Proto)
	d.limiter.Forget(n.Proto)
	d.holdMu.Unlock()
	d.sendHeld(held, nb)
	return nil
}

// DeleteNeighbor removes a neighbour entry.
func (d *Device) DeleteNeighbor(ctx context.Context, proto netip.Addr) error {
	if err := d.check(ctx); err != nil {
		return err
	}
	d.neigh.del(proto.Unmap())
	return nil
}

// Neighbors lists the entries sorted by tunnel address, with the time
// each was last used to send.
func (d *Device) Neighbors(ctx context.Context) ([]gre.Neighbor, error) {
	if err := d.check(ctx); err != nil {
		return nil, err
	}
	all := d.neigh.all()
	out := make([]gre.Neighbor, 0, len(all))
	for _, nb := range all {
		n := nb.n
		if t := nb.lastUsed.Load(); t != 0 {
			n.LastUsed = time.Unix(0, t)
		}
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b gre.Neighbor) int { return a.Proto.Compare(b.Proto) })
	return out, nil
}

// miss handles a packet whose next hop has no entry: hold a copy, raise a
// (rate-limited) event. An entry that appeared meanwhile is honoured.
func (d *Device) miss(nh, dst netip.Addr, pkt []byte, now time.Time) {
	d.holdMu.Lock()
	dropped := d.hold.Add(nh, pkt, now)
	allow := d.limiter.Allow(nh, now)
	var held [][]byte
	nb := d.lookupNeigh(nh)
	if nb != nil { // SetNeighbor ran between our lookup and Add
		held = d.hold.Take(nh)
	}
	d.holdMu.Unlock()
	if dropped > 0 {
		d.stats.Drop(gre.DropNoNeighbor, uint64(dropped))
	}
	if nb != nil {
		d.sendHeld(held, nb)
		return
	}
	if !allow {
		d.stats.MissesSuppressed.Add(1)
		return
	}
	select {
	case d.misses <- gre.Miss{NextHop: nh, Dst: dst}:
		d.stats.Misses.Add(1)
	default:
		d.stats.Drop(gre.DropQueueFull, 1)
	}
}

// sendHeld encapsulates and sends packets released from the hold queue.
func (d *Device) sendHeld(held [][]byte, nb *neighbor) {
	for _, p := range held {
		in, ok := parseInner(p)
		if !ok {
			d.stats.Drop(gre.DropMalformed, 1)
			continue
		}
		buf := make([]byte, txHeadroom+len(p))
		copy(buf[txHeadroom:], p)
		d.sendSingle(buf, len(p), in, nb)
	}
}

// housekeep expires held packets and learnt path MTUs; called by the
// mirror goroutine at least every housekeepInterval.
func (d *Device) housekeep(now time.Time) {
	if now.Sub(d.lastHouse) < housekeepInterval {
		return
	}
	d.lastHouse = now
	d.holdMu.Lock()
	n := d.hold.Expire(now)
	d.holdMu.Unlock()
	if n > 0 {
		d.stats.Drop(gre.DropHoldExpired, uint64(n))
	}
	d.pmtu.expire(now)
}
