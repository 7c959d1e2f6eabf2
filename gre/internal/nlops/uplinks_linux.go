//go:build linux

package nlops

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
)

// Uplinks keeps UplinkAddrs current from the kernel's address and route
// events, so that a device's Info costs no netlink dump: the NHRP engine
// asks for the local NBMA address on every packet it builds (each reply),
// and two dumps per reply were a third of a hub's time on the kernel data
// plane (measured with bench-nhrp-frr). Only address events and changes
// of default routes make it look again, after a short settling pause.
type Uplinks struct {
	exclude int
	cur     atomic.Pointer[[]netip.Addr]
	done    chan struct{}
	wg      sync.WaitGroup
	// looks counts the recomputations (for tests).
	looks atomic.Uint64
}

// settle is how long a burst of events is let pass before looking again.
const settle = 20 * time.Millisecond

// WatchUplinks starts following the calling network namespace's uplinks
// (UplinkAddrs with the tunnel's index excluded). Close stops it.
func WatchUplinks(exclude int) *Uplinks {
	u := &Uplinks{exclude: exclude, done: make(chan struct{})}
	addrs, routes, ok := u.subscribe()
	u.refresh()
	u.wg.Add(1)
	go u.run(addrs, routes, ok)
	return u
}

// Addrs returns the uplink addresses as of the last change; the caller
// must not modify the slice.
func (u *Uplinks) Addrs() []netip.Addr { return *u.cur.Load() }

// Close stops following.
func (u *Uplinks) Close() {
	select {
	case <-u.done:
		return
	default:
	}
	close(u.done)
	u.wg.Wait()
}

func (u *Uplinks) refresh() {
	a := UplinkAddrs(u.exclude)
	u.cur.Store(&a)
	u.looks.Add(1)
}

// subscribe opens both subscriptions; ok is false when either failed
// (then run retries).
func (u *Uplinks) subscribe() (chan netlink.AddrUpdate, chan netlink.RouteUpdate, bool) {
	addrs := make(chan netlink.AddrUpdate, 64)
	routes := make(chan netlink.RouteUpdate, 256)
	errCb := func(error) {}
	if err := netlink.AddrSubscribeWithOptions(addrs, u.done, netlink.AddrSubscribeOptions{ErrorCallback: errCb}); err != nil {
		return nil, nil, false
	}
	if err := netlink.RouteSubscribeWithOptions(routes, u.done, netlink.RouteSubscribeOptions{ErrorCallback: errCb}); err != nil {
		return addrs, nil, false
	}
	return addrs, routes, true
}

func (u *Uplinks) run(addrs chan netlink.AddrUpdate, routes chan netlink.RouteUpdate, ok bool) {
	defer u.wg.Done()
	var settleC <-chan time.Time
	for {
		if !ok {
			// A subscription failed or ended: look again now and then
			// until both are back (changes in between are caught by the
			// look after resubscribing).
			select {
			case <-u.done:
				return
			case <-time.After(time.Second):
			}
			addrs, routes, ok = u.subscribe()
			u.refresh()
			continue
		}
		select {
		case <-u.done:
			return
		case _, open := <-addrs:
			if !open {
				ok = false
				continue
			}
			if settleC == nil {
				settleC = time.After(settle)
			}
		case r, open := <-routes:
			if !open {
				ok = false
				continue
			}
			if isDefault(r.Route) && settleC == nil {
				settleC = time.After(settle)
			}
		case <-settleC:
			settleC = nil
			u.refresh()
		}
	}
}

// isDefault reports whether a route is an IPv4 default route (what
// DefaultRouteLinks looks at).
func isDefault(r netlink.Route) bool {
	if r.Family != 0 && r.Family != netlink.FAMILY_V4 {
		return false
	}
	if r.Dst == nil {
		return true
	}
	ones, _ := r.Dst.Mask.Size()
	return ones == 0
}
