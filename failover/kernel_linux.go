//go:build linux

package failover

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// NetlinkKernel reads the uplinks' interfaces from the kernel over netlink
// and signals their changes from link, address and route subscriptions.
type NetlinkKernel struct {
	protocol int
	ch       chan struct{}
	done     chan struct{}
	once     sync.Once
	wg       sync.WaitGroup
}

// NewNetlinkKernel subscribes to the kernel's link, address and route
// changes. protocol is the route protocol of the uplinks' own routes: a
// default route of another protocol is preferred when learning a gateway,
// and changes of the uplinks' own routes are not signalled. Close ends the
// subscriptions.
func NewNetlinkKernel(protocol int) (*NetlinkKernel, error) {
	k := &NetlinkKernel{protocol: protocol, ch: make(chan struct{}, 1), done: make(chan struct{})}
	links := make(chan netlink.LinkUpdate, 64)
	addrs := make(chan netlink.AddrUpdate, 64)
	routes := make(chan netlink.RouteUpdate, 256)
	opt := func(err error) { k.signal() }
	if err := netlink.LinkSubscribeWithOptions(links, k.done, netlink.LinkSubscribeOptions{ErrorCallback: opt}); err != nil {
		return nil, fmt.Errorf("failover: link subscription: %w", err)
	}
	if err := netlink.AddrSubscribeWithOptions(addrs, k.done, netlink.AddrSubscribeOptions{ErrorCallback: opt}); err != nil {
		k.Close()
		return nil, fmt.Errorf("failover: address subscription: %w", err)
	}
	if err := netlink.RouteSubscribeWithOptions(routes, k.done, netlink.RouteSubscribeOptions{ErrorCallback: opt}); err != nil {
		k.Close()
		return nil, fmt.Errorf("failover: route subscription: %w", err)
	}
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		for links != nil || addrs != nil || routes != nil {
			select {
			case _, ok := <-links:
				if !ok {
					links = nil
					continue
				}
				k.signal()
			case _, ok := <-addrs:
				if !ok {
					addrs = nil
					continue
				}
				k.signal()
			case r, ok := <-routes:
				if !ok {
					routes = nil
					continue
				}
				if (r.Dst == nil || isDefault(r.Dst)) && r.Protocol != netlink.RouteProtocol(k.protocol) {
					k.signal()
				}
			}
		}
	}()
	return k, nil
}

func isDefault(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}

func (k *NetlinkKernel) signal() {
	select {
	case k.ch <- struct{}{}:
	default:
	}
}

// Changes implements Kernel.
func (k *NetlinkKernel) Changes() <-chan struct{} { return k.ch }

// Close ends the subscriptions.
func (k *NetlinkKernel) Close() error {
	k.once.Do(func() { close(k.done) })
	k.wg.Wait()
	return nil
}

// Link implements Kernel.
func (k *NetlinkKernel) Link(_ context.Context, ifname string) (Link, error) {
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return Link{}, nil
		}
		return Link{}, fmt.Errorf("failover: link %s: %w", ifname, err)
	}
	a := l.Attrs()
	out := Link{Index: a.Index, Up: a.RawFlags&unix.IFF_UP != 0 && a.RawFlags&unix.IFF_LOWER_UP != 0}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return out, fmt.Errorf("failover: addresses of %s: %w", ifname, err)
	}
	for _, ad := range addrs {
		ip, ok := netip.AddrFromSlice(ad.IP)
		if !ok || !ip.Unmap().IsGlobalUnicast() {
			continue
		}
		ones, _ := ad.Mask.Size()
		out.Addr = netip.PrefixFrom(ip.Unmap(), ones)
		break
	}
	if out.Gateway, err = k.gateway(a.Index); err != nil {
		return out, fmt.Errorf("failover: default routes through %s: %w", ifname, err)
	}
	return out, nil
}

// gateway returns the next hop of a default route through the interface:
// one of another protocol in the main table first (the one the system
// configured), else the uplinks' own (theirs in any table).
func (k *NetlinkKernel) gateway(index int) (netip.Addr, error) {
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return netip.Addr{}, err
	}
	var ours netip.Addr
	for _, r := range routes {
		if r.Dst != nil && !isDefault(r.Dst) {
			continue
		}
		gw := netip.Addr{}
		if r.LinkIndex == index && r.Gw != nil {
			gw, _ = netip.AddrFromSlice(r.Gw)
		}
		for _, nh := range r.MultiPath {
			if nh.LinkIndex == index && nh.Gw != nil {
				gw, _ = netip.AddrFromSlice(nh.Gw)
			}
		}
		gw = gw.Unmap()
		if !gw.IsValid() {
			continue
		}
		if r.Protocol != netlink.RouteProtocol(k.protocol) && r.Table == unix.RT_TABLE_MAIN {
			return gw, nil
		}
		if r.Protocol == netlink.RouteProtocol(k.protocol) && !ours.IsValid() {
			ours = gw
		}
	}
	return ours, nil
}

// NetlinkConntrack ends tracked connections over netlink (ctnetlink).
type NetlinkConntrack struct{}

// Flush implements Conntrack.
func (NetlinkConntrack) Flush(_ context.Context, addr netip.Addr, mark, mask uint32) (int, error) {
	n, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, netlink.FAMILY_V4, uplinkFlows{addr: addr, mark: mark, mask: mask})
	if err != nil {
		return int(n), fmt.Errorf("failover: ending the connections of %s: %w", addr, err)
	}
	return int(n), nil
}

// uplinkFlows matches the connections of an uplink: translated to its
// address (the reply goes to it, the original did not come from it), or
// carrying its mark.
type uplinkFlows struct {
	addr       netip.Addr
	mark, mask uint32
}

// MatchConntrackFlow implements netlink.CustomConntrackFilter.
func (f uplinkFlows) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	if f.mask != 0 && f.mark != 0 && flow.Mark&f.mask == f.mark {
		return true
	}
	replyDst, _ := netip.AddrFromSlice(flow.Reverse.DstIP)
	origSrc, _ := netip.AddrFromSlice(flow.Forward.SrcIP)
	return replyDst.Unmap() == f.addr && origSrc.Unmap() != f.addr
}
