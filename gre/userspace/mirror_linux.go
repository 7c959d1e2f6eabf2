package userspace

import (
	"errors"
	"net/netip"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/opendmvpn/dmvpn/gre/internal/nlops"
)

// kernelLookup returns the lookupFunc that asks the kernel (RTM_GETROUTE)
// which next hop it would use, on a netlink handle of the caller's
// namespace.
//
// Why RTM_GETROUTE: the kernel has already chosen the TUN as the output
// device, through every rule and table (a shortcut table selected by
// `ip rule` included); asking it for the same destination reproduces that
// choice exactly — rules, metrics, multipath — where a userspace copy of
// the FIB and the rule list would drift. One query costs tens of
// microseconds, so answers are cached per destination and the cache is
// dropped on every route, rule, address or link event.
//
// The query is an output lookup: with the inner source when it is local
// (so `from <tunnel address>` rules match traffic the node originates),
// without it otherwise (the kernel refuses output lookups from foreign
// sources; forwarded traffic's source-based rules cannot be replayed after
// the TUN has hidden the input interface). When that lookup does not land
// on the TUN (a source- or interface-based rule sent the packet there), it
// is repeated restricted to the TUN (RTA_OIF), which yields the best route
// through it.
func kernelLookup(h *netlink.Handle, tunIndex int) lookupFunc {
	return func(dst, src netip.Addr) (netip.Addr, bool, error) {
		opts := &netlink.RouteGetOptions{}
		if src.IsValid() {
			opts.SrcAddr = nlops.IP(src)
		}
		rs, err := h.RouteGetWithOptions(nlops.IP(dst), opts)
		if err == nil && len(rs) > 0 && rs[0].LinkIndex == tunIndex {
			return nextHopOf(rs[0], dst), true, nil
		}
		rs, err = h.RouteGetWithOptions(nlops.IP(dst), &netlink.RouteGetOptions{OifIndex: tunIndex, SrcAddr: opts.SrcAddr})
		if err != nil {
			if errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.EINVAL) {
				return netip.Addr{}, false, nil
			}
			return netip.Addr{}, false, err
		}
		if len(rs) == 0 || rs[0].LinkIndex != tunIndex {
			return netip.Addr{}, false, nil
		}
		return nextHopOf(rs[0], dst), true, nil
	}
}

func nextHopOf(r netlink.Route, dst netip.Addr) netip.Addr {
	if gw := nlops.Addr(r.Gw); gw.IsValid() && !gw.IsUnspecified() {
		return gw
	}
	if r.Via != nil {
		if v, ok := r.Via.(*netlink.Via); ok {
			return nlops.Addr(v.Addr)
		}
	}
	return dst
}

// rtnetlink multicast groups the mirror follows.
var mirrorGroups = []uint{
	unix.RTNLGRP_LINK,
	unix.RTNLGRP_IPV4_IFADDR, unix.RTNLGRP_IPV6_IFADDR,
	unix.RTNLGRP_IPV4_ROUTE, unix.RTNLGRP_IPV6_ROUTE,
	unix.RTNLGRP_IPV4_RULE, unix.RTNLGRP_IPV6_RULE,
}

// housekeepInterval paces hold-queue expiry and the closed check of the
// event loop.
const housekeepInterval = 250 * time.Millisecond

// mirrorLoop follows the kernel's routing state: every route, rule,
// address or link event invalidates the next-hop cache, address events
// refresh the set of local addresses, link events track the TUN's MTU.
// A subscription that fails (socket error, ENOBUFS overflow) is replaced
// and everything is treated as changed.
func (d *Device) mirrorLoop() {
	defer d.wg.Done()
	for !d.isClosed() {
		s, err := nl.Subscribe(unix.NETLINK_ROUTE, mirrorGroups...)
		if err != nil {
			if d.sleep(time.Second) {
				return
			}
			continue
		}
		d.nlSock.Store(s)
		_ = s.SetReceiveBufferSize(1<<20, true)
		_ = s.SetReceiveTimeout(&unix.Timeval{Usec: int64(housekeepInterval / time.Microsecond)})
		d.resubscribes.Add(1)
		d.routeGen.Add(1)
		d.refreshLocals()
		d.refreshMTU()
		d.followEvents(s)
		s.Close()
	}
}

// followEvents reads one subscription until it fails or the device closes.
func (d *Device) followEvents(s *nl.NetlinkSocket) {
	for {
		msgs, _, err := s.Receive()
		d.housekeep(time.Now())
		if d.isClosed() {
			return
		}
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return // ENOBUFS (lost events) or a dead socket: resubscribe
		}
		changed, addrs, link := false, false, false
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.RTM_NEWROUTE, unix.RTM_DELROUTE, unix.RTM_NEWRULE, unix.RTM_DELRULE:
				changed = true
			case unix.RTM_NEWADDR, unix.RTM_DELADDR:
				changed, addrs = true, true
			case unix.RTM_NEWLINK, unix.RTM_DELLINK:
				changed, link = true, true
			}
		}
		if addrs {
			d.refreshLocals()
		}
		if link {
			d.refreshMTU()
		}
		if changed {
			d.routeGen.Add(1)
		}
	}
}

// refreshLocals reloads the set of local addresses.
func (d *Device) refreshLocals() {
	as, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return
	}
	m := make(map[netip.Addr]struct{}, len(as))
	for _, a := range as {
		if ad := nlops.Addr(a.IP); ad.IsValid() {
			m[ad] = struct{}{}
		}
	}
	d.locals.Store(&m)
}

// refreshMTU re-reads the TUN's MTU (an operator may change it).
func (d *Device) refreshMTU() {
	l, err := netlink.LinkByIndex(d.tunIndex)
	if err != nil {
		return
	}
	if m := l.Attrs().MTU; m > 0 {
		d.mtu.Store(int64(m))
	}
}

// isLocal reports whether a is one of this namespace's addresses.
func (d *Device) isLocal(a netip.Addr) bool {
	m := d.locals.Load()
	if m == nil {
		return false
	}
	_, ok := (*m)[a]
	return ok
}
