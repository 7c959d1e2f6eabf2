package nlops

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/internal/netnstest"
)

var addrCmp = cmp.Comparer(func(a, b netip.Addr) bool { return a == b })

func TestNeighConversion(t *testing.T) {
	n := gre.Neighbor{Proto: netip.MustParseAddr("10.0.0.2"), NBMA: netip.MustParseAddr("198.51.100.1"), Static: true}
	nn, err := NeighToNetlink(n, 5)
	if err != nil {
		t.Fatal(err)
	}
	if nn.LinkIndex != 5 || nn.Family != netlink.FAMILY_V4 || nn.State != netlink.NUD_PERMANENT || len(nn.LLIPAddr) != 4 {
		t.Fatalf("neigh %+v", nn)
	}
	back, ok := NeighFromNetlink(*nn)
	if !ok {
		t.Fatal("round trip refused")
	}
	if diff := cmp.Diff(n, back, addrCmp); diff != "" {
		t.Fatalf("round trip (-want +got):\n%s", diff)
	}
	v6 := gre.Neighbor{Proto: netip.MustParseAddr("fd00::2"), NBMA: netip.MustParseAddr("198.51.100.1")}
	if nn, _ := NeighToNetlink(v6, 5); nn.Family != netlink.FAMILY_V6 || nn.State != netlink.NUD_REACHABLE || len(nn.LLIPAddr) != 4 {
		t.Fatalf("IPv6 tunnel address: %+v", nn)
	}
	if _, err := NeighToNetlink(gre.Neighbor{Proto: n.Proto, NBMA: netip.MustParseAddr("fd00::1")}, 5); err == nil {
		t.Fatal("IPv6 NBMA accepted")
	}
	hw := netlink.Neigh{IP: net.ParseIP("10.0.0.3"), HardwareAddr: net.HardwareAddr{192, 0, 2, 3}, State: netlink.NUD_STALE}
	if g, ok := NeighFromNetlink(hw); !ok || g.NBMA != netip.MustParseAddr("192.0.2.3") {
		t.Fatalf("4-byte HardwareAddr: %+v %v", g, ok)
	}
	for _, bad := range []netlink.Neigh{
		{IP: net.ParseIP("10.0.0.4"), State: netlink.NUD_INCOMPLETE},
		{IP: net.ParseIP("10.0.0.4"), State: netlink.NUD_REACHABLE, HardwareAddr: net.HardwareAddr{1, 2, 3, 4, 5, 6}},
		{IP: net.ParseIP("10.0.0.4"), State: netlink.NUD_FAILED, LLIPAddr: net.ParseIP("192.0.2.4")},
	} {
		if _, ok := NeighFromNetlink(bad); ok {
			t.Errorf("accepted %+v", bad)
		}
	}
}

func TestRouteConversion(t *testing.T) {
	tests := []gre.Route{
		{Dst: netip.MustParsePrefix("10.2.0.0/24"), Via: netip.MustParseAddr("10.0.0.2"), Table: 42, Protocol: 191, MTU: 1400},
		{Dst: netip.MustParsePrefix("10.3.0.0/16")},
		{Dst: netip.MustParsePrefix("fd00:2::/64"), Via: netip.MustParseAddr("fd00::2")},
	}
	for _, r := range tests {
		nr, err := RouteToNetlink(r, 9)
		if err != nil {
			t.Fatal(err)
		}
		if nr.LinkIndex != 9 || (r.Table == 0) != (nr.Table == MainTable) {
			t.Errorf("%v: %+v", r, nr)
		}
		if r.Via.IsValid() != (nr.Flags&int(netlink.FLAG_ONLINK) != 0) {
			t.Errorf("%v: onlink flag %d", r, nr.Flags)
		}
		if diff := cmp.Diff(r, RouteFromNetlink(*nr), addrCmp, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
			t.Errorf("round trip (-want +got):\n%s", diff)
		}
	}
	if _, err := RouteToNetlink(gre.Route{}, 9); err == nil {
		t.Error("route without destination accepted")
	}
	if got := Prefix(nil, netlink.FAMILY_V4); got != netip.MustParsePrefix("0.0.0.0/0") {
		t.Errorf("default prefix %v", got)
	}
	if IgnoreNotFound(syscall.ESRCH) != nil || IgnoreNotFound(syscall.ENOENT) != nil || !errors.Is(IgnoreNotFound(syscall.EPERM), syscall.EPERM) {
		t.Error("IgnoreNotFound")
	}
}

// TestUplinkAddrs, in a scratch network namespace (root): without a default
// route no address is an uplink's (a LAN address must not be taken for the
// NBMA address); with one, the addresses of its interface, not the LAN's
// nor the excluded tunnel's.
func TestUplinkAddrs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (a network namespace)")
	}
	type result struct {
		before, after, excluded []netip.Addr
		err                     error
	}
	done := make(chan result, 1)
	go func() {
		// The thread stays locked and dies with the goroutine, so the
		// namespace it entered never leaks to other goroutines.
		runtime.LockOSThread()
		var r result
		defer func() { done <- r }()
		if r.err = unix.Unshare(unix.CLONE_NEWNET); r.err != nil {
			return
		}
		add := func(name, peer, addr string) (netlink.Link, error) {
			l := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: peer}
			if err := netlink.LinkAdd(l); err != nil {
				return nil, err
			}
			lk, err := netlink.LinkByName(name)
			if err != nil {
				return nil, err
			}
			a, _ := netlink.ParseAddr(addr)
			if err := netlink.AddrAdd(lk, a); err != nil {
				return nil, err
			}
			return lk, netlink.LinkSetUp(lk)
		}
		lan, err := add("lan0", "lan0p", "10.3.0.1/24")
		if err != nil {
			r.err = err
			return
		}
		wan, err := add("wan0", "wan0p", "192.0.2.13/24")
		if err != nil {
			r.err = err
			return
		}
		r.before = UplinkAddrs(0)
		gw := &netlink.Route{LinkIndex: wan.Attrs().Index, Gw: net.ParseIP("192.0.2.254")}
		if r.err = netlink.RouteAdd(gw); r.err != nil {
			return
		}
		r.after = UplinkAddrs(lan.Attrs().Index)
		r.excluded = UplinkAddrs(wan.Attrs().Index)
	}()
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if len(r.before) != 0 {
		t.Errorf("without a default route: %v, want none", r.before)
	}
	if diff := cmp.Diff([]netip.Addr{netip.MustParseAddr("192.0.2.13")}, r.after, addrCmp); diff != "" {
		t.Errorf("with a default route via wan0 (-want +got):\n%s", diff)
	}
	if len(r.excluded) != 0 {
		t.Errorf("the excluded interface's address listed: %v", r.excluded)
	}
}

// TestWatchUplinks, in a scratch network namespace (root): the watched
// list follows default routes and addresses as they come and go, without
// a dump per question.
func TestWatchUplinks(t *testing.T) {
	if !netnstest.Run(t, "nlup") {
		return
	}
	wan := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "wan0"}, PeerName: "wan0p"}
	if err := netlink.LinkAdd(wan); err != nil {
		t.Fatal(err)
	}
	l, err := netlink.LinkByName("wan0")
	if err != nil {
		t.Fatal(err)
	}
	a1, _ := netlink.ParseAddr("192.0.2.13/24")
	if err := netlink.AddrAdd(l, a1); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	u := WatchUplinks(0)
	defer u.Close()
	want := func(what string, addrs ...string) {
		t.Helper()
		var w []netip.Addr
		for _, a := range addrs {
			w = append(w, netip.MustParseAddr(a))
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			got := u.Addrs()
			if cmp.Diff(w, got, addrCmp, cmpopts.EquateEmpty()) == "" {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: uplinks %v, want %v", what, got, w)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	want("no default route")
	gw := &netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP("192.0.2.254")}
	if err := netlink.RouteAdd(gw); err != nil {
		t.Fatal(err)
	}
	want("default route via wan0", "192.0.2.13")
	a2, _ := netlink.ParseAddr("192.0.2.14/24")
	if err := netlink.AddrAdd(l, a2); err != nil {
		t.Fatal(err)
	}
	want("a second address", "192.0.2.13", "192.0.2.14")
	if err := netlink.RouteDel(gw); err != nil {
		t.Fatal(err)
	}
	want("default route gone")
}

// TestNeighWriter, in a scratch namespace (root): a batch larger than one
// message sets every entry, a request the kernel refuses fails alone (the
// rest of its batch applies), and deleting entries, present or not,
// succeeds.
func TestNeighWriter(t *testing.T) {
	if !netnstest.Run(t, "nlnw") {
		return
	}
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "nw0"}, PeerName: "nw0p"}); err != nil {
		t.Fatal(err)
	}
	l, err := netlink.LinkByName("nw0")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	w, err := NewNeighWriter()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	const n = 600
	var ops []NeighOp
	for i := range n {
		ops = append(ops, NeighOp{Neigh: &netlink.Neigh{LinkIndex: l.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_REACHABLE,
			IP: net.IPv4(10, 9, byte(i>>8), byte(i)), HardwareAddr: net.HardwareAddr{2, 0, 0, 0, byte(i >> 8), byte(i)}}})
	}
	bad := NeighOp{Neigh: &netlink.Neigh{LinkIndex: 99999, Family: netlink.FAMILY_V4, State: netlink.NUD_REACHABLE,
		IP: net.IPv4(10, 8, 0, 1), HardwareAddr: net.HardwareAddr{2, 0, 0, 0, 0, 1}}}
	ops = append(ops[:300], append([]NeighOp{bad}, ops[300:]...)...)
	errs := w.Apply(ops)
	for i, err := range errs {
		if (i == 300) != (err != nil) {
			t.Fatalf("op %d: %v", i, err)
		}
	}
	if !errors.Is(errs[300], syscall.ENODEV) {
		t.Errorf("refused op: %v, want ENODEV", errs[300])
	}
	ns, err := netlink.NeighList(l.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if len(ns) != n {
		t.Fatalf("%d neighbours in the kernel, want %d", len(ns), n)
	}
	del := []NeighOp{{Neigh: ops[0].Neigh, Del: true}, {Neigh: &netlink.Neigh{LinkIndex: l.Attrs().Index, IP: net.IPv4(10, 7, 0, 1)}, Del: true}}
	for i, err := range w.Apply(del) {
		if err != nil {
			t.Errorf("delete %d: %v", i, err)
		}
	}
	if ns, _ := netlink.NeighList(l.Attrs().Index, netlink.FAMILY_V4); len(ns) != n-1 {
		t.Fatalf("%d neighbours after deleting one, want %d", len(ns), n-1)
	}
}

// TestMissSubscription: the subscription delivers the kernel's resolution
// request for an address nothing answers, and none of the hundreds of
// neighbour changes made before it (filtered in the kernel).
func TestMissSubscription(t *testing.T) {
	if !netnstest.Run(t, "nlms") {
		return
	}
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ms0"}, PeerName: "ms0p"}); err != nil {
		t.Fatal(err)
	}
	l, err := netlink.LinkByName("ms0")
	if err != nil {
		t.Fatal(err)
	}
	p, _ := netlink.LinkByName("ms0p")
	for _, x := range []netlink.Link{l, p} {
		if err := netlink.LinkSetUp(x); err != nil {
			t.Fatal(err)
		}
	}
	if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, 66, 0, 1), Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	// Resolution asks userspace first (one application probe), no ARP.
	for k, v := range map[string]string{"app_solicit": "1", "ucast_solicit": "0", "mcast_solicit": "0"} {
		if err := (Real{}).WriteSysctl("net/ipv4/neigh/ms0/"+k, v); err != nil {
			t.Fatal(err)
		}
	}
	ch := make(chan netlink.NeighUpdate, 1024)
	done := make(chan struct{})
	defer close(done)
	if err := (Real{}).NeighSubscribe(ch, done, func(err error) { t.Errorf("subscription: %v", err) }); err != nil {
		t.Fatal(err)
	}
	w, err := NewNeighWriter()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	var ops []NeighOp
	for i := range 300 {
		ops = append(ops, NeighOp{Neigh: &netlink.Neigh{LinkIndex: l.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_REACHABLE,
			IP: net.IPv4(10, 9, byte(i>>8), byte(i)), HardwareAddr: net.HardwareAddr{2, 0, 0, 0, byte(i >> 8), byte(i)}}})
	}
	for i, err := range w.Apply(ops) {
		if err != nil {
			t.Fatalf("neighbour %d: %v", i, err)
		}
	}
	c, err := net.Dial("udp4", "10.66.0.9:9")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("x"))
	select {
	case u := <-ch:
		if u.Type != unix.RTM_GETNEIGH || u.LinkIndex != l.Attrs().Index || !u.IP.Equal(net.IPv4(10, 66, 0, 9)) {
			t.Fatalf("first event: type %d link %d ip %v, want the resolution request for 10.66.0.9 on ms0", u.Type, u.LinkIndex, u.IP)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no resolution request in 10 s")
	}
}
