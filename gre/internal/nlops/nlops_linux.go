//go:build linux

package nlops

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"

	"github.com/opendmvpn/dmvpn/gre"
)

// MainTable is the kernel's main routing table; gre.Route.Table 0 means it.
const MainTable = 254

// Netlink is the part of rtnetlink (and /proc/sys) the backends call.
type Netlink interface {
	LinkByName(name string) (netlink.Link, error)
	LinkAdd(l netlink.Link) error
	LinkDel(l netlink.Link) error
	LinkSetUp(l netlink.Link) error
	LinkSetMTU(l netlink.Link, mtu int) error
	LinkSetARPOn(l netlink.Link) error
	AddrReplace(l netlink.Link, a *netlink.Addr) error
	NeighSet(n *netlink.Neigh) error
	NeighDel(n *netlink.Neigh) error
	NeighList(linkIndex, family int) ([]netlink.Neigh, error)
	RouteReplace(r *netlink.Route) error
	RouteDel(r *netlink.Route) error
	RouteListFiltered(family int, filter *netlink.Route, mask uint64) ([]netlink.Route, error)
	// NeighSubscribe delivers the kernel's neighbour resolution requests
	// (RTM_GETNEIGH; other neighbour events may be left out) until done
	// is closed; the channel is closed when the subscription fails.
	NeighSubscribe(ch chan<- netlink.NeighUpdate, done <-chan struct{}, onError func(error)) error
	// WriteSysctl writes a value under /proc/sys ("net/ipv4/conf/gre1/send_redirects").
	WriteSysctl(name, value string) error
}

// Real is Netlink on the calling process's network namespace.
type Real struct{}

var _ Netlink = Real{}

// LinkByName looks a link up.
func (Real) LinkByName(name string) (netlink.Link, error) { return netlink.LinkByName(name) }

// LinkAdd creates a link.
func (Real) LinkAdd(l netlink.Link) error { return netlink.LinkAdd(l) }

// LinkDel deletes a link.
func (Real) LinkDel(l netlink.Link) error { return netlink.LinkDel(l) }

// LinkSetUp sets a link up.
func (Real) LinkSetUp(l netlink.Link) error { return netlink.LinkSetUp(l) }

// LinkSetMTU sets a link's MTU.
func (Real) LinkSetMTU(l netlink.Link, mtu int) error { return netlink.LinkSetMTU(l, mtu) }

// LinkSetARPOn clears IFF_NOARP.
func (Real) LinkSetARPOn(l netlink.Link) error { return netlink.LinkSetARPOn(l) }

// AddrReplace adds or replaces an address.
func (Real) AddrReplace(l netlink.Link, a *netlink.Addr) error { return netlink.AddrReplace(l, a) }

// NeighSet adds or replaces a neighbour entry.
func (Real) NeighSet(n *netlink.Neigh) error { return netlink.NeighSet(n) }

// NeighDel deletes a neighbour entry.
func (Real) NeighDel(n *netlink.Neigh) error { return netlink.NeighDel(n) }

// NeighList dumps neighbour entries, retrying an interrupted dump.
func (Real) NeighList(linkIndex, family int) ([]netlink.Neigh, error) {
	for i := 0; ; i++ {
		ns, err := netlink.NeighList(linkIndex, family)
		if errors.Is(err, netlink.ErrDumpInterrupted) && i < 5 {
			continue
		}
		return ns, err
	}
}

// RouteReplace adds or replaces a route.
func (Real) RouteReplace(r *netlink.Route) error { return netlink.RouteReplace(r) }

// RouteDel deletes a route.
func (Real) RouteDel(r *netlink.Route) error { return netlink.RouteDel(r) }

// RouteListFiltered dumps routes, retrying an interrupted dump.
func (Real) RouteListFiltered(family int, filter *netlink.Route, mask uint64) ([]netlink.Route, error) {
	for i := 0; ; i++ {
		rs, err := netlink.RouteListFiltered(family, filter, mask)
		if errors.Is(err, netlink.ErrDumpInterrupted) && i < 5 {
			continue
		}
		return rs, err
	}
}

// NeighSubscribe subscribes to the kernel's resolution requests
// (RTM_GETNEIGH) only, filtered in the kernel (misses_linux.go).
func (Real) NeighSubscribe(ch chan<- netlink.NeighUpdate, done <-chan struct{}, onError func(error)) error {
	return subscribeMisses(ch, done, onError)
}

// WriteSysctl writes /proc/sys/<name>.
func (Real) WriteSysctl(name, value string) error {
	p := filepath.Join("/proc/sys", filepath.Clean("/"+name))
	if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", strings.ReplaceAll(name, "/", "."), value, err)
	}
	return nil
}

// IP converts a netip address to net.IP (nil for the zero Addr).
func IP(a netip.Addr) net.IP {
	if !a.IsValid() {
		return nil
	}
	return net.IP(a.AsSlice())
}

// Addr converts a net.IP to netip, unmapping IPv4.
func Addr(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

// IPNet converts a prefix.
func IPNet(p netip.Prefix) *net.IPNet {
	p = p.Masked()
	return &net.IPNet{IP: IP(p.Addr()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// Prefix converts a net.IPNet; nil is the default route of the family.
func Prefix(n *net.IPNet, family int) netip.Prefix {
	if n == nil {
		if family == netlink.FAMILY_V6 {
			return netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
		return netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(Addr(n.IP), ones)
}

func family(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// NeighToNetlink builds the neighbour entry for a tunnel next hop: the NBMA
// address as a 4-byte lladdr, NUD_PERMANENT when static, else NUD_REACHABLE.
func NeighToNetlink(n gre.Neighbor, linkIndex int) (*netlink.Neigh, error) {
	if !n.Proto.IsValid() || !n.NBMA.Is4() {
		return nil, fmt.Errorf("neighbour %v → %v: need a tunnel address and an IPv4 NBMA address", n.Proto, n.NBMA)
	}
	state := netlink.NUD_REACHABLE
	if n.Static {
		state = netlink.NUD_PERMANENT
	}
	return &netlink.Neigh{
		LinkIndex: linkIndex,
		Family:    family(n.Proto),
		State:     state,
		IP:        IP(n.Proto),
		LLIPAddr:  IP(n.NBMA).To4(),
	}, nil
}

// NeighFromNetlink converts a kernel entry; false when it has no usable
// 4-byte lladdr (incomplete or failed entries).
func NeighFromNetlink(n netlink.Neigh) (gre.Neighbor, bool) {
	if n.State&(netlink.NUD_INCOMPLETE|netlink.NUD_FAILED) != 0 {
		return gre.Neighbor{}, false
	}
	var nbma netip.Addr
	switch {
	case len(n.LLIPAddr.To4()) == 4:
		nbma = Addr(n.LLIPAddr.To4())
	case len(n.HardwareAddr) == 4:
		nbma = netip.AddrFrom4([4]byte(n.HardwareAddr))
	default:
		return gre.Neighbor{}, false
	}
	return gre.Neighbor{Proto: Addr(n.IP), NBMA: nbma, Static: n.State&netlink.NUD_PERMANENT != 0}, true
}

// RouteToNetlink builds a route through the tunnel interface. A next hop
// is marked on-link: tunnel next hops need not be inside the tunnel prefix.
func RouteToNetlink(r gre.Route, linkIndex int) (*netlink.Route, error) {
	if !r.Dst.IsValid() {
		return nil, errors.New("route without destination")
	}
	table := r.Table
	if table == 0 {
		table = MainTable
	}
	nr := &netlink.Route{
		LinkIndex: linkIndex,
		Dst:       IPNet(r.Dst),
		Table:     table,
		Protocol:  netlink.RouteProtocol(r.Protocol),
		MTU:       r.MTU,
		Family:    family(r.Dst.Addr()),
	}
	if r.Via.IsValid() {
		nr.Gw = IP(r.Via)
		nr.Flags = int(netlink.FLAG_ONLINK)
	}
	if r.Dst.Addr().Is4() {
		nr.Scope = netlink.SCOPE_UNIVERSE
		if !r.Via.IsValid() {
			nr.Scope = netlink.SCOPE_LINK
		}
	}
	return nr, nil
}

// RouteFromNetlink converts a kernel route.
func RouteFromNetlink(r netlink.Route) gre.Route {
	table := r.Table
	if table == MainTable {
		table = 0
	}
	return gre.Route{Dst: Prefix(r.Dst, r.Family), Via: Addr(r.Gw), Table: table, Protocol: int(r.Protocol), MTU: r.MTU}
}

// ListRoutes returns the routes through a link in a table (0 = main).
func ListRoutes(nl Netlink, linkIndex, table int) ([]gre.Route, error) {
	if table == 0 {
		table = MainTable
	}
	rs, err := nl.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{LinkIndex: linkIndex, Table: table}, netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes of table %d: %w", table, err)
	}
	out := make([]gre.Route, 0, len(rs))
	for _, r := range rs {
		out = append(out, RouteFromNetlink(r))
	}
	return out, nil
}

// IgnoreNotFound turns "no such entry" into success (deleting what is not
// there is not an error).
func IgnoreNotFound(err error) error {
	if errors.Is(err, syscall.ESRCH) || errors.Is(err, syscall.ENOENT) {
		return nil
	}
	return err
}

// DefaultRouteLinks lists the interfaces of the IPv4 default routes in the
// main table (the uplinks).
func DefaultRouteLinks() []int {
	rs, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: MainTable}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil
	}
	var out []int
	for _, r := range rs {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		if r.LinkIndex > 0 {
			out = append(out, r.LinkIndex)
		}
		for _, nh := range r.MultiPath {
			out = append(out, nh.LinkIndex)
		}
	}
	return out
}

// UplinkAddrs lists the IPv4 addresses of the uplinks (interfaces with a
// default route), sorted; without a default route, none: which address
// reaches a peer is then the kernel's choice per destination (the engine
// asks it), and guessing one, a LAN address say, would advertise a wrong
// NBMA address. The tunnel interface (index exclude) is skipped.
func UplinkAddrs(exclude int) []netip.Addr {
	as, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil
	}
	up := map[int]bool{}
	for _, idx := range DefaultRouteLinks() {
		up[idx] = true
	}
	var out []netip.Addr
	for _, a := range as {
		ad := Addr(a.IP)
		if a.LinkIndex == exclude || !ad.IsGlobalUnicast() || !up[a.LinkIndex] {
			continue
		}
		out = append(out, ad)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}
