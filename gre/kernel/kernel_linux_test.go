package kernel

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/internal/leakcheck"
)

var testCfg = gre.Config{Name: "gre1", Key: 1001, Prefix: netip.MustParsePrefix("10.0.0.1/24"), MTU: 1472}

func openFake(t *testing.T, cfg gre.Config, f *fakeNL) (*Device, *fakeConn, *fakeMcast) {
	t.Helper()
	conn := newFakeConn()
	mc := &fakeMcast{in: make(chan []byte, 4), closed: make(chan struct{})}
	d, err := open(cfg, env{
		nl:         f,
		listenNHRP: func(ifindex int) (nhrpConn, error) { return conn, nil },
		listenMulticast: func(ifindex int, tunnel netip.Prefix) (mcastConn, error) {
			return mc, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return d, conn, mc
}

func TestCreateRequests(t *testing.T) {
	leakcheck.Check(t)
	f := newFakeNL()
	d, _, _ := openFake(t, testCfg, f)
	want := []string{
		"LinkAdd gre gre1",
		"AddrReplace gre1 10.0.0.1/24",
		"LinkSetARPOn gre1",
		"sysctl net/ipv4/conf/gre1/send_redirects=0",
		"sysctl net/ipv4/conf/all/send_redirects=0",
		"sysctl net/ipv4/neigh/gre1/app_solicit=1",
		"sysctl net/ipv4/neigh/gre1/ucast_solicit=0",
		"sysctl net/ipv4/neigh/gre1/mcast_solicit=0",
		"LinkSetUp gre1",
	}
	if diff := cmp.Diff(want, f.Calls()); diff != "" {
		t.Fatalf("requests (-want +got):\n%s", diff)
	}
	g := f.links["gre1"].(*netlink.Gretun)
	if g.Type() != "gre" {
		t.Errorf("link type %q: a nil/IPv6 Local makes netlink build ip6gre", g.Type())
	}
	if !g.Local.Equal(net.IPv4zero) || len(g.Local) != 4 {
		t.Errorf("Local = %v (len %d), want 4-byte 0.0.0.0", g.Local, len(g.Local))
	}
	if g.Remote != nil {
		t.Errorf("Remote = %v, want none (multipoint)", g.Remote)
	}
	if g.IKey != 1001 || g.OKey != 1001 || g.IFlags&nl.GRE_KEY == 0 || g.OFlags&nl.GRE_KEY == 0 {
		t.Errorf("keys %d/%d flags %#x/%#x", g.IKey, g.OKey, g.IFlags, g.OFlags)
	}
	if g.Ttl != 64 || g.PMtuDisc != 1 || g.MTU != 1472 {
		t.Errorf("ttl %d pmtudisc %d mtu %d", g.Ttl, g.PMtuDisc, g.MTU)
	}
	if info := d.Info(); info.Index != 7 || info.Backend != "kernel" || info.MTU != 1472 {
		t.Errorf("Info = %+v", info)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if calls := f.Calls(); calls[len(calls)-1] != "LinkDel gre1" {
		t.Errorf("Close did not delete the created device: %v", calls)
	}
	if _, ok := <-d.Misses(); ok {
		t.Error("Misses not closed")
	}
	if err := d.Close(); !errors.Is(err, gre.ErrClosed) {
		t.Errorf("second Close = %v", err)
	}
}

func TestLocalAndKeepState(t *testing.T) {
	f := newFakeNL()
	cfg := testCfg
	cfg.Local = netip.MustParseAddr("192.0.2.1")
	cfg.KeepState = true
	cfg.TTL = 32
	cfg.Checksum, cfg.Sequence = true, true
	d, _, _ := openFake(t, cfg, f)
	g := f.links["gre1"].(*netlink.Gretun)
	if g.OFlags != nl.GRE_KEY|nl.GRE_CSUM|nl.GRE_SEQ || g.IFlags != nl.GRE_KEY {
		t.Errorf("flags in %#x out %#x: want key in, key+csum+seq out", g.IFlags, g.OFlags)
	}
	if !g.Local.Equal(net.ParseIP("192.0.2.1")) || g.Type() != "gre" || g.Ttl != 32 {
		t.Errorf("Local %v type %s ttl %d", g.Local, g.Type(), g.Ttl)
	}
	d.Close()
	for _, c := range f.Calls() {
		if c == "LinkDel gre1" {
			t.Fatal("KeepState device deleted")
		}
	}
}

func TestAdopt(t *testing.T) {
	mk := func(mod func(g *netlink.Gretun)) *fakeNL {
		f := newFakeNL()
		g := linkSpec(testCfg)
		g.Index = 9
		if mod != nil {
			mod(g)
		}
		f.links["gre1"] = g
		return f
	}
	f := mk(nil)
	d, _, _ := openFake(t, testCfg, f)
	if d.Info().Index != 9 {
		t.Fatalf("adopted index %d", d.Info().Index)
	}
	d.Close()
	for _, c := range f.Calls() {
		if c == "LinkAdd gre gre1" || c == "LinkDel gre1" {
			t.Fatalf("adopting created or deleted the device: %v", f.Calls())
		}
	}
	bad := map[string]*fakeNL{
		"other key":      mk(func(g *netlink.Gretun) { g.IKey, g.OKey = 5, 5 }),
		"point-to-point": mk(func(g *netlink.Gretun) { g.Remote = net.ParseIP("198.51.100.1").To4() }),
	}
	veth := newFakeNL()
	veth.links["gre1"] = &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "gre1", Index: 3}}
	bad["not gre"] = veth
	for name, f := range bad {
		_, err := open(testCfg, env{nl: f, listenNHRP: func(int) (nhrpConn, error) { return newFakeConn(), nil }})
		if !errors.Is(err, ErrNotMGRE) {
			t.Errorf("%s: err = %v, want ErrNotMGRE", name, err)
		}
	}
}

func TestCreateRefused(t *testing.T) {
	f := newFakeNL()
	f.failAdd = errors.New("operation not supported")
	_, err := open(testCfg, env{nl: f, listenNHRP: func(int) (nhrpConn, error) { return newFakeConn(), nil }})
	if err == nil || !errors.Is(err, f.failAdd) {
		t.Fatalf("err = %v", err)
	}
}

func TestNeighborsRoutes(t *testing.T) {
	f := newFakeNL()
	d, _, _ := openFake(t, testCfg, f)
	defer d.Close()
	ctx := context.Background()
	f.calls = nil
	d.SetNeighbor(ctx, gre.Neighbor{Proto: netip.MustParseAddr("10.0.0.2"), NBMA: netip.MustParseAddr("198.51.100.1"), Static: true})
	d.SetNeighbor(ctx, gre.Neighbor{Proto: netip.MustParseAddr("10.0.0.3"), NBMA: netip.MustParseAddr("203.0.113.1")})
	if err := d.DeleteNeighbor(ctx, netip.MustParseAddr("10.0.0.3")); err != nil {
		t.Errorf("deleting a missing neighbour: %v", err)
	}
	d.ReplaceRoute(ctx, gre.Route{Dst: netip.MustParsePrefix("10.2.0.0/24"), Via: netip.MustParseAddr("10.0.0.2"), Table: 42, Protocol: 191})
	d.ReplaceRoute(ctx, gre.Route{Dst: netip.MustParsePrefix("10.3.0.0/24")})
	if err := d.DeleteRoute(ctx, gre.Route{Dst: netip.MustParsePrefix("10.3.0.0/24")}); err != nil {
		t.Errorf("deleting a missing route: %v", err)
	}
	d.Routes(ctx, 42)
	want := []string{
		"NeighSet link=7 family=2 state=0x80 ip=10.0.0.2 lladdr=c6336401",
		"NeighSet link=7 family=2 state=0x2 ip=10.0.0.3 lladdr=cb007101",
		"NeighDel link=7 ip=10.0.0.3",
		"RouteReplace link=7 dst=10.2.0.0/24 gw=10.0.0.2 table=42 proto=191 flags=4",
		"RouteReplace link=7 dst=10.3.0.0/24 gw=<nil> table=254 proto=0 flags=0",
		"RouteDel link=7 dst=10.3.0.0/24 table=254",
		"RouteList link=7 table=42 mask=0x" + hex(netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE),
	}
	if diff := cmp.Diff(want, f.Calls()); diff != "" {
		t.Fatalf("requests (-want +got):\n%s", diff)
	}
	// The kernel's ages are clock ticks (1/100 s) before the dump: when the
	// entry was last used.
	f.neigh = []netlink.Neigh{
		{LinkIndex: 7, IP: net.ParseIP("10.0.0.5"), LLIPAddr: net.ParseIP("192.0.2.5").To4(), State: netlink.NUD_DELAY, Used: 250},
		{LinkIndex: 7, IP: net.ParseIP("10.0.0.4"), LLIPAddr: net.ParseIP("192.0.2.4").To4(), State: netlink.NUD_PERMANENT, Used: 0},
		{LinkIndex: 7, IP: net.ParseIP("10.0.0.6"), State: netlink.NUD_INCOMPLETE},
		{LinkIndex: 7, IP: net.ParseIP("10.0.0.7"), State: netlink.NUD_FAILED, LLIPAddr: net.ParseIP("192.0.2.7").To4()},
	}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	d.env.now = func() time.Time { return t0 }
	got, err := d.Neighbors(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wantN := []gre.Neighbor{
		{Proto: netip.MustParseAddr("10.0.0.4"), NBMA: netip.MustParseAddr("192.0.2.4"), Static: true, LastUsed: t0},
		{Proto: netip.MustParseAddr("10.0.0.5"), NBMA: netip.MustParseAddr("192.0.2.5"), LastUsed: t0.Add(-2500 * time.Millisecond)},
	}
	if diff := cmp.Diff(wantN, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Fatalf("Neighbors (-want +got):\n%s", diff)
	}
}

func hex(v uint64) string {
	const digits = "0123456789abcdef"
	if v == 0 {
		return "0"
	}
	var b []byte
	for ; v > 0; v >>= 4 {
		b = append([]byte{digits[v&15]}, b...)
	}
	return string(b)
}

func TestMissesFromKernel(t *testing.T) {
	leakcheck.Check(t)
	f := newFakeNL()
	d, _, _ := openFake(t, testCfg, f)
	defer d.Close()
	var ch chan<- netlink.NeighUpdate
	waitSub := func(n int) {
		t.Helper()
		deadline := time.Now().Add(3 * time.Second)
		for {
			var c int
			ch, c = f.sub()
			if c >= n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("no subscription %d", n)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitSub(1)
	upd := func(typ uint16, link int, ip string) netlink.NeighUpdate {
		return netlink.NeighUpdate{Type: typ, Neigh: netlink.Neigh{LinkIndex: link, IP: net.ParseIP(ip)}}
	}
	ch <- upd(syscall.RTM_NEWNEIGH, 7, "10.0.0.8") // not a request
	ch <- upd(syscall.RTM_GETNEIGH, 3, "10.0.0.8") // another device
	ch <- upd(syscall.RTM_GETNEIGH, 7, "10.0.0.9") // ours
	select {
	case m := <-d.Misses():
		if m.NextHop != netip.MustParseAddr("10.0.0.9") {
			t.Fatalf("miss %+v", m)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no miss")
	}
	// The subscription dies: the device subscribes again.
	close(ch)
	waitSub(2)
	ch <- upd(syscall.RTM_GETNEIGH, 7, "10.0.0.10")
	select {
	case m := <-d.Misses():
		if m.NextHop != netip.MustParseAddr("10.0.0.10") {
			t.Fatalf("miss %+v", m)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no miss after resubscribing")
	}
	if c := d.Counters(); c.Misses != 2 {
		t.Fatalf("Misses = %d", c.Misses)
	}
}

// TestNHRPSocket: packets written are sent by the writer (in batches)
// addressed to their NBMA peer; packets read are handed over with their
// sender, and those without a 4-byte sender or too long are counted and
// dropped.
func TestNHRPSocket(t *testing.T) {
	f := newFakeNL()
	d, conn, _ := openFake(t, testCfg, f)
	defer d.Close()
	peer := netip.MustParseAddr("198.51.100.1")
	for i := range 3 {
		if err := d.WriteNHRP([]byte{1, byte(i)}, peer); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(conn.Sent()) < 3 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	sent := conn.Sent()
	if len(sent) != 3 || sent[0].peer != peer || sent[2].b[1] != 2 {
		t.Fatalf("sent %+v", sent)
	}
	if err := d.WriteNHRP([]byte{1}, netip.MustParseAddr("fd00::1")); err == nil {
		t.Fatal("IPv6 NBMA accepted")
	}
	conn.in <- fakePkt{b: []byte{9}}                                                        // not from an NBMA address
	conn.in <- fakePkt{b: []byte{8}, peer: netip.MustParseAddr("203.0.113.2"), trunc: true} // too long
	conn.in <- fakePkt{b: []byte{7, 7}, peer: netip.MustParseAddr("203.0.113.1")}
	b := make([]byte, 10)
	n, from, err := d.ReadNHRP(b)
	if err != nil || n != 2 || from != netip.MustParseAddr("203.0.113.1") {
		t.Fatalf("ReadNHRP = %d %v %v", n, from, err)
	}
	c := d.Counters()
	if c.NHRPTx != 3 || c.NHRPRx != 1 || c.Drops["malformed"] != 1 || c.Drops["truncated"] != 1 {
		t.Fatalf("counters %+v", c)
	}
}

// TestApplyNeighborsCountsRefusals: a batch applies entry by entry; those
// the kernel refuses because its table is full fail alone and are counted
// by reason.
func TestApplyNeighborsCountsRefusals(t *testing.T) {
	f := newFakeNL()
	f.neighLimit = 2
	d, _, _ := openFake(t, testCfg, f)
	defer d.Close()
	var ops []gre.NeighborOp
	for i := range 4 {
		ops = append(ops, gre.NeighborOp{Neighbor: gre.Neighbor{Proto: netip.AddrFrom4([4]byte{10, 0, 0, byte(10 + i)}), NBMA: netip.MustParseAddr("198.51.100.1")}})
	}
	ops = append(ops, gre.NeighborOp{Neighbor: gre.Neighbor{Proto: netip.MustParseAddr("10.0.0.99")}, Delete: true})
	errs := d.ApplyNeighbors(context.Background(), ops)
	for i, err := range errs {
		if want := i == 2 || i == 3; want != errors.Is(err, syscall.ENOBUFS) {
			t.Errorf("op %d: %v", i, err)
		}
	}
	if got := d.Counters().NeighborFailures; got[gre.NeighborTableFull] != 2 || len(got) != 1 {
		t.Errorf("NeighborFailures = %v, want table_full 2", got)
	}
}

// TestNHRPWritesFlushedOnClose: what was written before Close goes out
// before the socket closes (purges at shutdown).
func TestNHRPWritesFlushedOnClose(t *testing.T) {
	f := newFakeNL()
	d, conn, _ := openFake(t, testCfg, f)
	for i := range 100 {
		if err := d.WriteNHRP([]byte{byte(i)}, netip.MustParseAddr("198.51.100.1")); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if got := len(conn.Sent()); got != 100 {
		t.Fatalf("%d of 100 sent before close", got)
	}
}

func TestMulticastReplication(t *testing.T) {
	leakcheck.Check(t)
	f := newFakeNL()
	d, _, mc := openFake(t, testCfg, f)
	peers := []netip.Addr{netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("203.0.113.1")}
	if err := d.SetMulticast(peers); err != nil {
		t.Fatal(err)
	}
	pkt := make([]byte, 40)
	pkt[0] = 0x45
	mc.in <- pkt
	v6 := make([]byte, 60)
	v6[0] = 0x60
	mc.in <- v6
	deadline := time.Now().Add(2 * time.Second)
	for {
		mc.mu.Lock()
		n := len(mc.sent)
		mc.mu.Unlock()
		if n == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sent %v", mc.sent)
		}
		time.Sleep(5 * time.Millisecond)
	}
	want := []string{"0x0800→198.51.100.1 (40 bytes)", "0x0800→203.0.113.1 (40 bytes)", "0x86dd→198.51.100.1 (60 bytes)", "0x86dd→203.0.113.1 (60 bytes)"}
	if diff := cmp.Diff(want, mc.sent); diff != "" {
		t.Fatalf("copies (-want +got):\n%s", diff)
	}
	d.Close()
}

// TestMulticastFilter runs the capture filter on packets of both
// directions (the packet type it loads first replaced by a constant, which
// the BPF interpreter cannot provide): only outgoing multicast and
// broadcast are captured. A received packet captured and replicated would
// come back from a peer doing the same: a loop.
func TestMulticastFilter(t *testing.T) {
	v4 := func(dst string) []byte {
		p := make([]byte, 40)
		p[0] = 0x45
		a := netip.MustParseAddr(dst).As4()
		copy(p[16:20], a[:])
		return p
	}
	v6 := func(dst string) []byte {
		p := make([]byte, 60)
		p[0] = 0x60
		a := netip.MustParseAddr(dst).As16()
		copy(p[24:40], a[:])
		return p
	}
	nhrp := make([]byte, 92) // an NHRP packet: afn 1, protocol 0x0800, …
	copy(nhrp, []byte{0x00, 0x01, 0x08, 0x00, 0, 0, 0, 0, 0, 1, 0, 92, 0, 0, 0, 52, 1, 3, 4, 0})
	for _, tc := range []struct {
		name    string
		pktType uint32
		pkt     []byte
		want    bool
	}{
		{"out IPv4 multicast", unix.PACKET_OUTGOING, v4("224.0.0.5"), true},
		{"out limited broadcast", unix.PACKET_OUTGOING, v4("255.255.255.255"), true},
		{"out tunnel broadcast", unix.PACKET_OUTGOING, v4("10.0.0.255"), true},
		{"out IPv6 multicast", unix.PACKET_OUTGOING, v6("ff02::5"), true},
		{"out IPv4 unicast", unix.PACKET_OUTGOING, v4("10.0.0.2"), false},
		{"out IPv6 unicast", unix.PACKET_OUTGOING, v6("fd00::2"), false},
		{"out NHRP", unix.PACKET_OUTGOING, nhrp, false},
		{"in IPv4 multicast", unix.PACKET_HOST, v4("224.0.0.5"), false},
		{"in IPv4 multicast (to a group)", unix.PACKET_MULTICAST, v4("224.0.0.5"), false},
		{"in IPv6 multicast", unix.PACKET_MULTICAST, v6("ff02::5"), false},
		{"in IPv4 unicast", unix.PACKET_HOST, v4("10.0.0.1"), false},
		{"in NHRP", unix.PACKET_HOST, nhrp, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prog := mcastProgram(netip.MustParsePrefix("10.0.0.1/24"))
			if _, ok := prog[0].(bpf.LoadExtension); !ok {
				t.Fatalf("first instruction %v, want the packet type load", prog[0])
			}
			prog[0] = bpf.LoadConstant{Dst: bpf.RegA, Val: tc.pktType}
			vm, err := bpf.NewVM(prog)
			if err != nil {
				t.Fatal(err)
			}
			n, err := vm.Run(tc.pkt)
			if err != nil {
				t.Fatal(err)
			}
			if got := n > 0; got != tc.want {
				t.Errorf("captured %v (%d bytes), want %v", got, n, tc.want)
			}
		})
	}
	for _, p := range []string{"10.0.0.1/24", "10.0.0.1/31"} {
		if _, err := mcastFilter(netip.MustParsePrefix(p)); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
}
