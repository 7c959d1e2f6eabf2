package main

import (
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// routeWatch follows the main table's BGP routes (protocol 186) of a
// namespace through a netlink subscription and timestamps each change as
// it arrives: no polling between the hub and the figures.
type routeWatch struct {
	done chan struct{}

	mu      sync.Mutex
	have    map[netip.Prefix]bool
	err     error
	waiters []*routeWaiter
	// adds counts the routes added since mark, first and last when.
	adds        int
	first, last time.Time
}

type routeWaiter struct {
	cond func(have map[netip.Prefix]bool) bool
	at   chan time.Time
}

// watchRoutes subscribes to the routes of namespace ns.
func watchRoutes(ns string) (*routeWatch, error) {
	h, err := netns.GetFromName(ns)
	if err != nil {
		return nil, fmt.Errorf("namespace %s: %w", ns, err)
	}
	defer h.Close()
	w := &routeWatch{done: make(chan struct{}), have: map[netip.Prefix]bool{}}
	ch := make(chan netlink.RouteUpdate, 65536)
	err = netlink.RouteSubscribeWithOptions(ch, w.done, netlink.RouteSubscribeOptions{
		Namespace: &h, ListExisting: true, ReceiveBufferSize: 64 << 20, ReceiveBufferForceSize: true,
		ErrorCallback: func(err error) {
			w.mu.Lock()
			if w.err == nil {
				w.err = err
			}
			w.mu.Unlock()
		},
	})
	if err != nil {
		return nil, fmt.Errorf("route subscription in %s: %w", ns, err)
	}
	go w.run(ch)
	return w, nil
}

func (w *routeWatch) run(ch <-chan netlink.RouteUpdate) {
	for u := range ch {
		now := time.Now()
		if u.Table != unix.RT_TABLE_MAIN || u.Protocol != bgpProto || u.Dst == nil || u.Dst.IP.To4() == nil {
			continue
		}
		a, _ := netip.AddrFromSlice(u.Dst.IP.To4())
		bits, _ := u.Dst.Mask.Size()
		p := netip.PrefixFrom(a, bits)
		w.mu.Lock()
		switch u.Type {
		case unix.RTM_NEWROUTE:
			if !w.have[p] {
				w.have[p] = true
				if w.adds == 0 {
					w.first = now
				}
				w.adds++
				w.last = now
			}
		case unix.RTM_DELROUTE:
			delete(w.have, p)
		}
		kept := w.waiters[:0]
		for _, wt := range w.waiters {
			if wt.cond(w.have) {
				wt.at <- now
			} else {
				kept = append(kept, wt)
			}
		}
		w.waiters = kept
		w.mu.Unlock()
	}
}

// mark starts counting the routes added from now.
func (w *routeWatch) mark() {
	w.mu.Lock()
	w.adds, w.first, w.last = 0, time.Time{}, time.Time{}
	w.mu.Unlock()
}

// added returns how many routes were added since mark, the first and the
// last when.
func (w *routeWatch) added() (int, time.Time, time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.adds, w.first, w.last
}

// count returns how many BGP routes the table holds.
func (w *routeWatch) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.have)
}

// wait returns when cond first held (at the change that made it hold, or
// now if it holds already), or an error after timeout.
func (w *routeWatch) wait(what string, timeout time.Duration, cond func(have map[netip.Prefix]bool) bool) (time.Time, error) {
	wt := &routeWaiter{cond: cond, at: make(chan time.Time, 1)}
	w.mu.Lock()
	if w.err != nil {
		err := w.err
		w.mu.Unlock()
		return time.Time{}, fmt.Errorf("route subscription: %w", err)
	}
	if cond(w.have) {
		w.mu.Unlock()
		return time.Now(), nil
	}
	w.waiters = append(w.waiters, wt)
	n := len(w.have)
	w.mu.Unlock()
	select {
	case t := <-wt.at:
		return t, nil
	case <-time.After(timeout):
		w.mu.Lock()
		for i, x := range w.waiters {
			if x == wt {
				w.waiters = append(w.waiters[:i], w.waiters[i+1:]...)
				break
			}
		}
		n = len(w.have)
		err := w.err
		w.mu.Unlock()
		return time.Time{}, fmt.Errorf("%s: not within %v (%d BGP routes in the kernel; subscription error %v)", what, timeout, n, err)
	}
}

// waitCount waits until the table holds at least n BGP routes.
func (w *routeWatch) waitCount(what string, n int, timeout time.Duration) (time.Time, error) {
	return w.wait(what, timeout, func(have map[netip.Prefix]bool) bool { return len(have) >= n })
}

// waitPrefixes waits until every one of ps is present (or, with !present,
// absent).
func (w *routeWatch) waitPrefixes(what string, ps []netip.Prefix, present bool, timeout time.Duration) (time.Time, error) {
	return w.wait(what, timeout, func(have map[netip.Prefix]bool) bool {
		for _, p := range ps {
			if have[p] != present {
				return false
			}
		}
		return true
	})
}

func (w *routeWatch) close() { close(w.done) }
