package kernel

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink"
)

// fakeNL records every request and keeps just enough state to answer.
type fakeNL struct {
	mu       sync.Mutex
	calls    []string
	links    map[string]netlink.Link
	neigh    []netlink.Neigh
	routes   []netlink.Route
	sysctls  map[string]string
	subs     []chan<- netlink.NeighUpdate
	subCount int
	failAdd  error
	// neighLimit makes NeighSet fail with ENOBUFS past that many entries
	// (0: no limit), as a full kernel table does.
	neighLimit int
	neighSets  int
}

func newFakeNL() *fakeNL {
	return &fakeNL{links: map[string]netlink.Link{}, sysctls: map[string]string{}}
}

func (f *fakeNL) rec(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf(format, args...))
}

func (f *fakeNL) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeNL) LinkByName(name string) (netlink.Link, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if l, ok := f.links[name]; ok {
		return l, nil
	}
	return nil, netlink.LinkNotFoundError{}
}

func (f *fakeNL) LinkAdd(l netlink.Link) error {
	f.rec("LinkAdd %s %s", l.Type(), l.Attrs().Name)
	if f.failAdd != nil {
		return f.failAdd
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	l.Attrs().Index = 7
	f.links[l.Attrs().Name] = l
	return nil
}

func (f *fakeNL) LinkDel(l netlink.Link) error {
	f.rec("LinkDel %s", l.Attrs().Name)
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.links, l.Attrs().Name)
	return nil
}

func (f *fakeNL) LinkSetUp(l netlink.Link) error { f.rec("LinkSetUp %s", l.Attrs().Name); return nil }

func (f *fakeNL) LinkSetARPOn(l netlink.Link) error {
	f.rec("LinkSetARPOn %s", l.Attrs().Name)
	return nil
}

func (f *fakeNL) LinkSetMTU(l netlink.Link, mtu int) error {
	f.rec("LinkSetMTU %s %d", l.Attrs().Name, mtu)
	return nil
}

func (f *fakeNL) AddrReplace(l netlink.Link, a *netlink.Addr) error {
	f.rec("AddrReplace %s %s", l.Attrs().Name, a.IPNet)
	return nil
}

func (f *fakeNL) NeighSet(n *netlink.Neigh) error {
	f.rec("NeighSet link=%d family=%d state=%#x ip=%s lladdr=%x", n.LinkIndex, n.Family, n.State, n.IP, []byte(n.LLIPAddr))
	f.mu.Lock()
	defer f.mu.Unlock()
	f.neighSets++
	if f.neighLimit > 0 && f.neighSets > f.neighLimit {
		return syscall.ENOBUFS
	}
	return nil
}

func (f *fakeNL) NeighDel(n *netlink.Neigh) error {
	f.rec("NeighDel link=%d ip=%s", n.LinkIndex, n.IP)
	return syscall.ENOENT
}

func (f *fakeNL) NeighList(linkIndex, family int) ([]netlink.Neigh, error) {
	f.rec("NeighList link=%d family=%d", linkIndex, family)
	return f.neigh, nil
}

func (f *fakeNL) RouteReplace(r *netlink.Route) error {
	f.rec("RouteReplace link=%d dst=%s gw=%s table=%d proto=%d flags=%d", r.LinkIndex, r.Dst, r.Gw, r.Table, r.Protocol, r.Flags)
	return nil
}

func (f *fakeNL) RouteDel(r *netlink.Route) error {
	f.rec("RouteDel link=%d dst=%s table=%d", r.LinkIndex, r.Dst, r.Table)
	return syscall.ESRCH
}

func (f *fakeNL) RouteListFiltered(family int, filter *netlink.Route, mask uint64) ([]netlink.Route, error) {
	f.rec("RouteList link=%d table=%d mask=%#x", filter.LinkIndex, filter.Table, mask)
	return f.routes, nil
}

func (f *fakeNL) NeighSubscribe(ch chan<- netlink.NeighUpdate, done <-chan struct{}, onError func(error)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.subs = append(f.subs, ch)
	f.subCount++
	return nil
}

// sub returns the newest subscription channel and how many there were.
func (f *fakeNL) sub() (chan<- netlink.NeighUpdate, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.subs) == 0 {
		return nil, 0
	}
	return f.subs[len(f.subs)-1], f.subCount
}

func (f *fakeNL) WriteSysctl(name, value string) error {
	f.rec("sysctl %s=%s", name, value)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sysctls[name] = value
	return nil
}

// fakeConn is an NHRP packet socket fed by a channel.
type fakeConn struct {
	in     chan fakePkt
	mu     sync.Mutex
	sent   []fakePkt
	closed chan struct{}
	once   sync.Once
}

type fakePkt struct {
	b     []byte
	peer  netip.Addr // invalid: a sender without a 4-byte address
	trunc bool
}

func newFakeConn() *fakeConn {
	return &fakeConn{in: make(chan fakePkt, 8), closed: make(chan struct{})}
}

func (c *fakeConn) ReadBatch(ms []nhrpMsg) (int, error) {
	n := 0
	fill := func(p fakePkt) {
		ms[n].N = copy(ms[n].B, p.b)
		ms[n].Peer, ms[n].Trunc = p.peer, p.trunc
		n++
	}
	select {
	case p := <-c.in:
		fill(p)
	case <-c.closed:
		return 0, errConnClosed
	}
	for n < len(ms) {
		select {
		case p := <-c.in:
			fill(p)
		default:
			return n, nil
		}
	}
	return n, nil
}

func (c *fakeConn) WriteBatch(ms []nhrpMsg) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range ms {
		c.sent = append(c.sent, fakePkt{b: append([]byte(nil), m.B...), peer: m.Peer})
	}
	return len(ms), nil
}

func (c *fakeConn) Sent() []fakePkt {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]fakePkt(nil), c.sent...)
}

func (c *fakeConn) Close() error { c.once.Do(func() { close(c.closed) }); return nil }

// fakeMcast is a multicast capture socket fed by a channel.
type fakeMcast struct {
	in     chan []byte
	mu     sync.Mutex
	sent   []string
	closed chan struct{}
	once   sync.Once
}

func (c *fakeMcast) Read(b []byte) (int, error) {
	select {
	case p := <-c.in:
		return copy(b, p), nil
	case <-c.closed:
		return 0, net.ErrClosed
	}
}

func (c *fakeMcast) Send(pkt []byte, proto uint16, nbma netip.Addr) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sent = append(c.sent, fmt.Sprintf("%#04x→%s (%d bytes)", proto, nbma, len(pkt)))
	return nil
}

func (c *fakeMcast) Close() error { c.once.Do(func() { close(c.closed) }); return nil }
