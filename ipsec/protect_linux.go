//go:build linux

package ipsec

import (
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// IngressFilter is the data plane's ingress check for userspace mode: GRE
// counts only if it came out of charon's ipsec TUN (whatever its number:
// after a crash it may be ipsec1), because kernel-libipsec does no inbound
// policy check of its own. It is asked for every datagram, so it answers
// from a table of interface indexes kept from link events (a netlink
// subscription, the links listed once at each (re)subscription) instead
// of a dump of every link per datagram (net.InterfaceByIndex); an index
// the table does not hold yet is asked of the kernel once, by index.
type IngressFilter struct {
	ipsec   atomic.Pointer[map[int]bool] // ifindex → an ipsec TUN; copy on write
	mu      sync.Mutex                   // serialises writers
	done    chan struct{}
	stopped chan struct{}
}

// isIPsecName reports whether an interface name is charon's TUN's.
func isIPsecName(name string) bool { return strings.HasPrefix(name, "ipsec") }

// NewIngressFilter starts following the links. Close stops it.
func NewIngressFilter() *IngressFilter {
	f := &IngressFilter{done: make(chan struct{}), stopped: make(chan struct{})}
	f.ipsec.Store(&map[int]bool{})
	ready := make(chan struct{})
	go f.follow(ready)
	<-ready
	return f
}

// Accept reports whether GRE that arrived on ifindex came out of an ipsec
// TUN.
func (f *IngressFilter) Accept(ifindex int) bool {
	if v, ok := (*f.ipsec.Load())[ifindex]; ok {
		return v
	}
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return false
	}
	v := isIPsecName(l.Attrs().Name)
	f.set(func(m map[int]bool) { m[ifindex] = v })
	return v
}

// Close stops following the links.
func (f *IngressFilter) Close() {
	select {
	case <-f.done:
	default:
		close(f.done)
	}
	<-f.stopped
}

// set applies a change to a copy of the table.
func (f *IngressFilter) set(change func(map[int]bool)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	cur := *f.ipsec.Load()
	m := make(map[int]bool, len(cur)+1)
	for k, v := range cur {
		m[k] = v
	}
	change(m)
	f.ipsec.Store(&m)
}

// follow subscribes to link events and keeps the table, subscribing again
// (and listing the links again) when a subscription fails.
func (f *IngressFilter) follow(ready chan struct{}) {
	defer close(f.stopped)
	first := true
	for {
		ch := make(chan netlink.LinkUpdate, 64)
		stop := make(chan struct{})
		err := netlink.LinkSubscribeWithOptions(ch, stop, netlink.LinkSubscribeOptions{ErrorCallback: func(error) {}})
		if err == nil {
			f.relist()
		}
		if first {
			close(ready)
			first = false
		}
		if err != nil {
			select {
			case <-f.done:
				return
			case <-time.After(time.Second):
				continue
			}
		}
	events:
		for {
			select {
			case <-f.done:
				close(stop)
				return
			case u, ok := <-ch:
				if !ok {
					break events // the subscription failed: again
				}
				idx, name := int(u.Index), u.Attrs().Name
				del := u.Header.Type == unix.RTM_DELLINK
				f.set(func(m map[int]bool) {
					if del {
						delete(m, idx)
					} else {
						m[idx] = isIPsecName(name)
					}
				})
			}
		}
		close(stop)
	}
}

// relist replaces the table with the links there are now.
func (f *IngressFilter) relist() {
	ls, err := netlink.LinkList()
	if err != nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	m := make(map[int]bool, len(ls))
	for _, l := range ls {
		m[l.Attrs().Index] = isIPsecName(l.Attrs().Name)
	}
	f.ipsec.Store(&m)
}
