package nhrp

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/gre/gretest"
)

// The in-process lab: a hub and spokes over the in-memory GRE fake, run
// inside testing/synctest bubbles so timers run on a fake clock.
//
//	hub    10.0.0.1/24   NBMA 192.0.2.1
//	spokeN 10.0.0.1N/24  NBMA 198.51.100.1N  LAN 10.1N.0.0/24

var (
	tunnelNet = netip.MustParsePrefix("10.0.0.0/24")
	lanAll    = netip.MustParsePrefix("10.0.0.0/8")
)

func hubAddr(i int) netip.Addr   { return netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}) }
func hubNBMA(i int) netip.Addr   { return netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}) }
func spokeAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, 0, byte(10 + i)}) }
func spokeNBMA(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 51, 100, byte(10 + i)}) }
func spokeLAN(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(10 + i), 0, 0}), 24)
}
func lanHost(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, byte(10 + i), 0, 5}) }

// labRouter routes like the lab's nodes: its own LANs are local, the
// tunnel subnet is connected, other LANs go via a fixed next hop (the hub
// for spokes), and per-LAN routes to clients for a hub.
type labRouter struct {
	mu     sync.Mutex
	local  []netip.Prefix
	routes map[netip.Prefix]netip.Addr // prefix → tunnel next hop
}

func (r *labRouter) Route(ctx context.Context, dst netip.Addr) (RouteInfo, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.local {
		if p.Contains(dst) {
			return RouteInfo{Prefix: p, Local: true}, nil
		}
	}
	if tunnelNet.Contains(dst) {
		return RouteInfo{Prefix: tunnelNet, NextHop: dst}, nil
	}
	best := netip.Prefix{}
	for p := range r.routes {
		if p.Contains(dst) && p.Bits() > best.Bits() {
			best = p
		}
	}
	if best.IsValid() {
		return RouteInfo{Prefix: best, NextHop: r.routes[best]}, nil
	}
	return RouteInfo{}, fmt.Errorf("no route to %s", dst)
}

func (r *labRouter) setLocal(p ...netip.Prefix) {
	r.mu.Lock()
	r.local = p
	r.mu.Unlock()
}

// node is one engine on the fake internet.
type node struct {
	name   string
	dev    *gretest.Device
	tun    Tunnel
	eng    *Engine
	router *labRouter
	cfg    Config
	deps   Deps
	cancel context.CancelFunc
	routes []gre.Route // data-plane routes to restore on restart

	mu     sync.Mutex
	events []Event
}

func (n *node) Event(e Event) {
	n.mu.Lock()
	n.events = append(n.events, e)
	n.mu.Unlock()
}

// eventsOf returns the events of a kind seen so far.
func (n *node) eventsOf(k EventKind) []Event {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []Event
	for _, e := range n.events {
		if e.Kind == k {
			out = append(out, e)
		}
	}
	return out
}

type lab struct {
	t     *testing.T
	inet  *gretest.Internet
	nodes map[string]*node
}

func newLab(t *testing.T) *lab {
	return &lab{t: t, inet: gretest.NewInternet(), nodes: map[string]*node{}}
}

// natTunnel reports a private NBMA address to the engine while the fake
// device sits at the public one: the spoke is behind NAT.
type natTunnel struct {
	*gretest.Device
	private netip.Addr
}

func (n natTunnel) Info() gre.Info {
	i := n.Device.Info()
	i.NBMA = []netip.Addr{n.private}
	return i
}

// add creates a node's device and engine, without starting it.
func (l *lab) add(name string, addr netip.Addr, nbma netip.Addr, cfg Config, router *labRouter) *node {
	l.t.Helper()
	dev, err := l.inet.NewDevice(gretest.Config{Name: "gre-" + name, NBMA: nbma, Prefix: netip.PrefixFrom(addr, 24), Key: 42})
	if err != nil {
		l.t.Fatal(err)
	}
	n := &node{name: name, dev: dev, tun: dev, router: router, cfg: cfg}
	n.deps = Deps{Tunnel: dev, Router: router, Observers: []Observer{n}}
	l.nodes[name] = n
	l.t.Cleanup(func() { dev.Close() })
	return n
}

// start runs the node's engine until stop or the end of the test.
func (l *lab) start(n *node) {
	l.t.Helper()
	n.deps.Tunnel = n.tun
	eng, err := New(n.cfg, n.deps)
	if err != nil {
		l.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n.eng, n.cancel = eng, cancel
	go eng.Run(ctx)
	if err := eng.waitRunning(context.Background()); err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { n.stop() })
}

// restart stops the node's engine and starts a new one on a new device
// at the same NBMA address, as a restarted daemon would.
func (l *lab) restart(n *node) {
	l.t.Helper()
	n.stop()
	info := n.dev.Info()
	n.dev.Close()
	dev, err := l.inet.NewDevice(gretest.Config{Name: info.Name, NBMA: info.NBMA[0], Prefix: info.Prefix, Key: info.Key})
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { dev.Close() })
	for _, r := range n.routes {
		dev.ReplaceRoute(context.Background(), r)
	}
	n.dev, n.tun = dev, dev
	l.start(n)
}

// stop stops the engine and waits for it.
func (n *node) stop() {
	if n.cancel != nil {
		n.cancel()
		<-n.eng.Done()
		n.cancel = nil
	}
}

// hubConfig and spokeConfig are the lab's defaults.
func hubConfig() Config {
	return Config{Role: RoleHub, HoldingTime: 600 * time.Second, Redirect: true, Shortcut: true}
}

func spokeConfig(hubs ...int) Config {
	c := Config{Role: RoleSpoke, HoldingTime: 600 * time.Second, Shortcut: true, ShortcutIdle: 60 * time.Second}
	for _, h := range hubs {
		c.NHS = append(c.NHS, NHSConfig{Proto: hubAddr(h), NBMA: hubNBMA(h)})
	}
	return c
}

// addHub adds hub i with routes to the LANs of the given spokes.
func (l *lab) addHub(i int, cfg Config, spokes ...int) *node {
	r := &labRouter{routes: map[netip.Prefix]netip.Addr{}}
	for _, s := range spokes {
		r.routes[spokeLAN(s)] = spokeAddr(s)
	}
	return l.add(fmt.Sprintf("hub%d", i), hubAddr(i), hubNBMA(i), cfg, r)
}

// addSpoke adds spoke i routing the other LANs via hub `via`.
func (l *lab) addSpoke(i, via int, cfg Config) *node {
	r := &labRouter{local: []netip.Prefix{spokeLAN(i)}, routes: map[netip.Prefix]netip.Addr{lanAll: hubAddr(via)}}
	n := l.add(fmt.Sprintf("spoke%d", i), spokeAddr(i), spokeNBMA(i), cfg, r)
	// The data plane's view of the same route (for Forward).
	n.routes = []gre.Route{{Dst: lanAll, Via: hubAddr(via), Table: 254}}
	if err := n.dev.ReplaceRoute(context.Background(), n.routes[0]); err != nil {
		l.t.Fatal(err)
	}
	return n
}

// standard builds and starts a hub and n spokes.
func (l *lab) standard(n int) (*node, []*node) {
	var ids []int
	for i := 1; i <= n; i++ {
		ids = append(ids, i)
	}
	hub := l.addHub(1, hubConfig(), ids...)
	l.start(hub)
	var spokes []*node
	for _, i := range ids {
		s := l.addSpoke(i, 1, spokeConfig(1))
		l.start(s)
		spokes = append(spokes, s)
	}
	return hub, spokes
}

// send simulates a LAN packet from spoke s to dst: the spoke's data plane
// picks the NBMA address; when that is a hub, the hub relays it (and its
// redirect rule sees it). It returns where the packet went first.
func (l *lab) send(s *node, src, dst netip.Addr) (netip.Addr, error) {
	nbma, err := s.dev.Forward(dst)
	if err != nil {
		return nbma, err
	}
	for _, n := range l.nodes {
		if n.dev.Info().NBMA[0] == nbma && n.eng != nil && n.cfg.Role == RoleHub {
			n.eng.Relayed(ipv4Packet(src, dst))
		}
	}
	return nbma, nil
}

// ipv4Packet returns a minimal IPv4 header from src to dst.
func ipv4Packet(src, dst netip.Addr) []byte {
	b := []byte{0x45, 0, 0, 84, 0, 1, 0x40, 0, 63, 1, 0, 0}
	s, d := src.As4(), dst.As4()
	b = append(b, s[:]...)
	return append(b, d[:]...)
}

// settle lets the bubble's goroutines run until they all block, then
// advances the fake clock by d.
func settle(d time.Duration) {
	time.Sleep(d)
}

// cacheOf returns a node's cache.
func (n *node) cache(t *testing.T) []CacheEntry {
	t.Helper()
	c, err := n.eng.Cache(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// entry returns the cache entry for p, if any.
func (n *node) entry(t *testing.T, p netip.Prefix) (CacheEntry, bool) {
	t.Helper()
	for _, e := range n.cache(t) {
		if e.Proto == p {
			return e, true
		}
	}
	return CacheEntry{}, false
}

// neighbors returns the device's neighbour entries as "proto→nbma".
func (n *node) neighbors(t *testing.T) []string {
	t.Helper()
	ns, err := n.dev.Neighbors(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, x := range ns {
		out = append(out, x.Proto.String()+"→"+x.NBMA.String())
	}
	slices.Sort(out)
	return out
}

// nhsState returns the state of a spoke's server at nbma.
func (n *node) nhsState(t *testing.T, nbma netip.Addr) NHSStatus {
	t.Helper()
	st, err := n.eng.NHS(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if s.NBMA == nbma {
			return s
		}
	}
	t.Fatalf("%s has no server %s", n.name, nbma)
	return NHSStatus{}
}
