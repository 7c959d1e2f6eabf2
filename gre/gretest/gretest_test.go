package gretest

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/internal/leakcheck"
)

var (
	hubNBMA = netip.MustParseAddr("192.0.2.1")
	spA     = netip.MustParseAddr("198.51.100.1")
	spB     = netip.MustParseAddr("203.0.113.1")
)

func newNet(t *testing.T) (*Internet, *Device, *Device, *Device) {
	t.Helper()
	in := NewInternet()
	mk := func(name string, nbma netip.Addr, tun string) *Device {
		d, err := in.NewDevice(Config{Name: name, NBMA: nbma, Prefix: netip.MustParsePrefix(tun), Key: 42})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		return d
	}
	return in, mk("hub", hubNBMA, "10.0.0.1/24"), mk("a", spA, "10.0.0.2/24"), mk("b", spB, "10.0.0.3/24")
}

func readNHRP(t *testing.T, d *Device) (string, netip.Addr) {
	t.Helper()
	type res struct {
		b    []byte
		from netip.Addr
		err  error
	}
	ch := make(chan res, 1)
	go func() {
		b := make([]byte, 1500)
		n, from, err := d.ReadNHRP(b)
		ch <- res{b[:n], from, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("ReadNHRP: %v", r.err)
		}
		return string(r.b), r.from
	case <-time.After(2 * time.Second):
		t.Fatal("no NHRP packet")
	}
	return "", netip.Addr{}
}

func TestNHRPDelivery(t *testing.T) {
	leakcheck.Check(t)
	in, hub, a, b := newNet(t)
	if err := a.WriteNHRP([]byte("register a"), hubNBMA); err != nil {
		t.Fatal(err)
	}
	if got, from := readNHRP(t, hub); got != "register a" || from != spA {
		t.Fatalf("hub got %q from %v", got, from)
	}
	// partition a–hub: b still reaches the hub, a does not
	in.Partition(spA, hubNBMA)
	a.WriteNHRP([]byte("lost"), hubNBMA)
	b.WriteNHRP([]byte("register b"), hubNBMA)
	if got, from := readNHRP(t, hub); got != "register b" || from != spB {
		t.Fatalf("hub got %q from %v", got, from)
	}
	in.Heal(spA, hubNBMA)
	in.SetFilter(func(from, to netip.Addr, pkt []byte) bool { return string(pkt) != "filtered" })
	a.WriteNHRP([]byte("filtered"), hubNBMA)
	a.WriteNHRP([]byte("healed"), hubNBMA)
	if got, _ := readNHRP(t, hub); got != "healed" {
		t.Fatalf("hub got %q, want healed", got)
	}
	in.SetDown(spB, true)
	b.WriteNHRP([]byte("down"), hubNBMA)
	in.SetDown(spB, false)
	b.WriteNHRP([]byte("up"), hubNBMA)
	if got, _ := readNHRP(t, hub); got != "up" {
		t.Fatalf("hub got %q, want up", got)
	}
	if c := hub.Counters(); c.NHRPRx != 4 {
		t.Errorf("hub NHRPRx = %d, want 4", c.NHRPRx)
	}
}

func TestKeyMismatchDropped(t *testing.T) {
	in := NewInternet()
	x, _ := in.NewDevice(Config{Name: "x", NBMA: spA, Key: 1})
	y, _ := in.NewDevice(Config{Name: "y", NBMA: spB, Key: 2})
	defer x.Close()
	defer y.Close()
	x.WriteNHRP([]byte("hi"), spB)
	if got := y.Counters().Drops["bad_key"]; got != 1 {
		t.Fatalf("bad_key drops = %d, want 1", got)
	}
	if _, err := in.NewDevice(Config{Name: "dup", NBMA: spA}); err == nil {
		t.Fatal("duplicate NBMA accepted")
	}
}

func TestNeighboursRoutesForward(t *testing.T) {
	_, hub, a, _ := newNet(t)
	_ = hub
	ctx := context.Background()
	hubTun := netip.MustParseAddr("10.0.0.1")
	if err := a.SetNeighbor(ctx, gre.Neighbor{Proto: hubTun, NBMA: hubNBMA, Static: true}); err != nil {
		t.Fatal(err)
	}
	if err := a.ReplaceRoute(ctx, gre.Route{Dst: netip.MustParsePrefix("10.9.0.0/16"), Via: hubTun, Table: 42}); err != nil {
		t.Fatal(err)
	}
	shortcut := gre.Route{Dst: netip.MustParsePrefix("10.9.1.0/24"), Via: netip.MustParseAddr("10.0.0.3"), Table: 42}
	a.ReplaceRoute(ctx, shortcut)

	if nbma, err := a.Forward(netip.MustParseAddr("10.9.7.7")); err != nil || nbma != hubNBMA {
		t.Fatalf("Forward via hub = %v, %v", nbma, err)
	}
	if _, err := a.Forward(netip.MustParseAddr("10.9.1.5")); !errors.Is(err, ErrNoNeighbor) {
		t.Fatalf("Forward to unresolved shortcut: %v", err)
	}
	select {
	case m := <-a.Misses():
		want := gre.Miss{NextHop: netip.MustParseAddr("10.0.0.3"), Dst: netip.MustParseAddr("10.9.1.5")}
		if diff := cmp.Diff(want, m, cmp.Comparer(func(x, y netip.Addr) bool { return x == y })); diff != "" {
			t.Errorf("miss (-want +got):\n%s", diff)
		}
	default:
		t.Fatal("no miss raised")
	}
	if _, err := a.Forward(netip.MustParseAddr("172.16.0.1")); !errors.Is(err, ErrNoRoute) {
		t.Fatalf("Forward without route: %v", err)
	}
	routes, _ := a.Routes(ctx, 42)
	if len(routes) != 2 {
		t.Fatalf("routes = %v", routes)
	}
	a.DeleteRoute(ctx, shortcut)
	routes, _ = a.Routes(ctx, 42)
	if len(routes) != 1 {
		t.Fatalf("routes after delete = %v", routes)
	}
	ns, _ := a.Neighbors(ctx)
	if diff := cmp.Diff([]gre.Neighbor{{Proto: hubTun, NBMA: hubNBMA, Static: true}}, ns,
		cmp.Comparer(func(x, y netip.Addr) bool { return x == y }), cmpopts.IgnoreFields(gre.Neighbor{}, "LastUsed")); diff != "" {
		t.Errorf("neighbours (-want +got):\n%s", diff)
	}
	if ns[0].LastUsed.IsZero() {
		t.Error("LastUsed not set by Forward")
	}
	a.DeleteNeighbor(ctx, hubTun)
	if ns, _ := a.Neighbors(ctx); len(ns) != 0 {
		t.Fatalf("neighbours after delete: %v", ns)
	}
	a.SetMulticast([]netip.Addr{hubNBMA})
	if got := a.Multicast(); len(got) != 1 || got[0] != hubNBMA {
		t.Fatalf("multicast = %v", got)
	}
}

func TestClose(t *testing.T) {
	leakcheck.Check(t)
	in := NewInternet()
	d, _ := in.NewDevice(Config{Name: "x", NBMA: spA})
	errc := make(chan error, 1)
	go func() {
		_, _, err := d.ReadNHRP(make([]byte, 10))
		errc <- err
	}()
	time.Sleep(10 * time.Millisecond)
	d.Close()
	if err := <-errc; !errors.Is(err, gre.ErrClosed) {
		t.Fatalf("ReadNHRP after Close: %v", err)
	}
	if _, ok := <-d.Misses(); ok {
		t.Fatal("Misses not closed")
	}
	if err := d.WriteNHRP(nil, spB); !errors.Is(err, gre.ErrClosed) {
		t.Fatalf("WriteNHRP after Close: %v", err)
	}
	if err := d.SetNeighbor(context.Background(), gre.Neighbor{Proto: spB, NBMA: spB}); !errors.Is(err, gre.ErrClosed) {
		t.Fatalf("SetNeighbor after Close: %v", err)
	}
	// the NBMA address is free again
	d2, err := in.NewDevice(Config{Name: "y", NBMA: spA})
	if err != nil {
		t.Fatal(err)
	}
	d2.Close()
}
