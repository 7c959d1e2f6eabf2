// Package gretest is an in-memory gre.Device: a shared Internet delivers
// NHRP packets between devices by NBMA address, so a hub and several spokes
// run in one test process. Tests can partition links, drop packets, inject
// neighbour misses and push simulated data packets through a device's
// route and neighbour tables.
package gretest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/opendmvpn/dmvpn/gre"
)

// ErrNoNeighbor is returned by Device.Forward when the next hop has no
// neighbour entry (a Miss is raised as well).
var ErrNoNeighbor = errors.New("gretest: no neighbour entry")

// ErrNoRoute is returned by Device.Forward when no route covers the
// destination.
var ErrNoRoute = errors.New("gretest: no route through the tunnel")

// queueLen is the depth of each device's NHRP and miss queues.
const queueLen = 256

// Internet connects fake devices by NBMA address.
type Internet struct {
	mu      sync.Mutex
	nodes   map[netip.Addr]*Device
	cut     map[[2]netip.Addr]bool // directed from→to links that drop
	down    map[netip.Addr]bool
	filter  func(from, to netip.Addr, pkt []byte) bool
	nextIdx int
}

// NewInternet returns an empty internet.
func NewInternet() *Internet {
	return &Internet{nodes: map[netip.Addr]*Device{}, cut: map[[2]netip.Addr]bool{}, down: map[netip.Addr]bool{}, nextIdx: 100}
}

// Partition drops every packet between a and b, both directions.
func (in *Internet) Partition(a, b netip.Addr) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.cut[[2]netip.Addr{a, b}] = true
	in.cut[[2]netip.Addr{b, a}] = true
}

// CutOneWay drops packets from → to only.
func (in *Internet) CutOneWay(from, to netip.Addr) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.cut[[2]netip.Addr{from, to}] = true
}

// Heal undoes Partition and CutOneWay between a and b.
func (in *Internet) Heal(a, b netip.Addr) {
	in.mu.Lock()
	defer in.mu.Unlock()
	delete(in.cut, [2]netip.Addr{a, b})
	delete(in.cut, [2]netip.Addr{b, a})
}

// SetDown takes a node's uplink down (true) or up; a down node neither
// sends nor receives.
func (in *Internet) SetDown(nbma netip.Addr, down bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.down[nbma] = down
}

// SetFilter installs a function that sees every packet; returning false
// drops it. Nil removes the filter.
func (in *Internet) SetFilter(f func(from, to netip.Addr, pkt []byte) bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.filter = f
}

// Config describes a fake device.
type Config struct {
	Name   string
	NBMA   netip.Addr
	Prefix netip.Prefix
	Key    uint32
	MTU    int
}

// NewDevice attaches a device at cfg.NBMA. An NBMA address can be used
// once until that device is closed.
func (in *Internet) NewDevice(cfg Config) (*Device, error) {
	if !cfg.NBMA.IsValid() {
		return nil, fmt.Errorf("gretest: device %q needs an NBMA address", cfg.Name)
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if _, ok := in.nodes[cfg.NBMA]; ok {
		return nil, fmt.Errorf("gretest: NBMA %s already in use", cfg.NBMA)
	}
	if cfg.MTU == 0 {
		cfg.MTU = 1500 - gre.Overhead
	}
	in.nextIdx++
	d := &Device{
		net:   in,
		info:  gre.Info{Name: cfg.Name, Index: in.nextIdx, Key: cfg.Key, HasKey: true, Prefix: cfg.Prefix, NBMA: []netip.Addr{cfg.NBMA}, MTU: cfg.MTU, Backend: "gretest"},
		nhrp:  make(chan packet, queueLen),
		miss:  make(chan gre.Miss, queueLen),
		done:  make(chan struct{}),
		neigh: map[netip.Addr]gre.Neighbor{},
	}
	in.nodes[cfg.NBMA] = d
	return d, nil
}

// deliver hands an NHRP packet from one NBMA to another.
func (in *Internet) deliver(from, to netip.Addr, key uint32, b []byte) {
	in.mu.Lock()
	dst := in.nodes[to]
	ok := dst != nil && !in.down[from] && !in.down[to] && !in.cut[[2]netip.Addr{from, to}]
	if ok && in.filter != nil {
		ok = in.filter(from, to, b)
	}
	in.mu.Unlock()
	if !ok {
		return
	}
	if dst.info.Key != key {
		dst.stats.Drop(gre.DropBadKey, 1)
		return
	}
	select {
	case dst.nhrp <- packet{from: from, b: slices.Clone(b)}:
		dst.stats.NHRPRx.Add(1)
	case <-dst.done:
	default:
		dst.stats.Drop(gre.DropQueueFull, 1)
	}
}

// Inject delivers an NHRP packet to `to` as if the device at `from` had
// sent it (a forged outer source, or a packet replayed from a capture
// under its original sender's address), with to's own key. Links cut or
// down drop it as they would a real one.
func (in *Internet) Inject(from, to netip.Addr, b []byte) {
	in.mu.Lock()
	dst := in.nodes[to]
	in.mu.Unlock()
	if dst == nil {
		return
	}
	in.deliver(from, to, dst.info.Key, b)
}

type packet struct {
	from netip.Addr
	b    []byte
}

// Device is an in-memory gre.Device.
type Device struct {
	net   *Internet
	info  gre.Info
	nhrp  chan packet
	miss  chan gre.Miss
	done  chan struct{}
	stats gre.Stats

	mu        sync.Mutex
	closed    bool
	neigh     map[netip.Addr]gre.Neighbor
	routes    []gre.Route
	multicast []netip.Addr
}

var _ gre.Device = (*Device)(nil)

// Info describes the device.
func (d *Device) Info() gre.Info {
	d.mu.Lock()
	defer d.mu.Unlock()
	i := d.info
	i.NBMA = slices.Clone(i.NBMA)
	return i
}

// Move re-attaches the device at another NBMA address, as a node whose
// uplink failed over to another ISP: packets to the old address are lost
// from then on, and the device sends from the new one.
func (d *Device) Move(nbma netip.Addr) error {
	in := d.net
	in.mu.Lock()
	defer in.mu.Unlock()
	if _, ok := in.nodes[nbma]; ok {
		return fmt.Errorf("gretest: NBMA %s already in use", nbma)
	}
	d.mu.Lock()
	old := d.info.NBMA[0]
	d.info.NBMA = []netip.Addr{nbma}
	d.mu.Unlock()
	if in.nodes[old] == d {
		delete(in.nodes, old)
	}
	in.nodes[nbma] = d
	return nil
}

// ReadNHRP blocks until an NHRP packet arrives or the device is closed.
func (d *Device) ReadNHRP(b []byte) (int, netip.Addr, error) {
	select {
	case p := <-d.nhrp:
		return copy(b, p.b), p.from, nil
	case <-d.done:
		return 0, netip.Addr{}, gre.ErrClosed
	}
}

// WriteNHRP sends an NHRP packet through the internet.
func (d *Device) WriteNHRP(b []byte, to netip.Addr) error {
	if d.isClosed() {
		return gre.ErrClosed
	}
	d.stats.NHRPTx.Add(1)
	d.net.deliver(d.Info().NBMA[0], to, d.info.Key, b)
	return nil
}

func (d *Device) isClosed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closed
}

// SetNeighbor adds or replaces a neighbour entry.
func (d *Device) SetNeighbor(ctx context.Context, n gre.Neighbor) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !n.Proto.IsValid() || !n.NBMA.Is4() {
		return fmt.Errorf("gretest: neighbour %v → %v: invalid address", n.Proto, n.NBMA)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return gre.ErrClosed
	}
	d.neigh[n.Proto] = n
	return nil
}

// DeleteNeighbor removes a neighbour entry.
func (d *Device) DeleteNeighbor(ctx context.Context, proto netip.Addr) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return gre.ErrClosed
	}
	delete(d.neigh, proto)
	return nil
}

// Neighbors lists the entries sorted by tunnel address.
func (d *Device) Neighbors(ctx context.Context) ([]gre.Neighbor, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, gre.ErrClosed
	}
	out := make([]gre.Neighbor, 0, len(d.neigh))
	for _, n := range d.neigh {
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b gre.Neighbor) int { return a.Proto.Compare(b.Proto) })
	return out, nil
}

// Misses delivers neighbour-miss events; closed by Close.
func (d *Device) Misses() <-chan gre.Miss { return d.miss }

// InjectMiss raises a neighbour-miss event as the data plane would.
func (d *Device) InjectMiss(m gre.Miss) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return gre.ErrClosed
	}
	select {
	case d.miss <- m:
		d.stats.Misses.Add(1)
	default:
		d.stats.Drop(gre.DropQueueFull, 1)
	}
	return nil
}

// SetMulticast sets the NBMA replication list.
func (d *Device) SetMulticast(nbma []netip.Addr) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return gre.ErrClosed
	}
	d.multicast = slices.Clone(nbma)
	return nil
}

// Multicast returns the replication list.
func (d *Device) Multicast() []netip.Addr {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.multicast)
}

// ReplaceRoute adds or replaces the route with the same table and prefix.
func (d *Device) ReplaceRoute(ctx context.Context, r gre.Route) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return gre.ErrClosed
	}
	r.Dst = r.Dst.Masked()
	for i := range d.routes {
		if d.routes[i].Table == r.Table && d.routes[i].Dst == r.Dst {
			d.routes[i] = r
			return nil
		}
	}
	d.routes = append(d.routes, r)
	return nil
}

// DeleteRoute removes the route with the same table and prefix.
func (d *Device) DeleteRoute(ctx context.Context, r gre.Route) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return gre.ErrClosed
	}
	r.Dst = r.Dst.Masked()
	d.routes = slices.DeleteFunc(d.routes, func(x gre.Route) bool { return x.Table == r.Table && x.Dst == r.Dst })
	return nil
}

// Routes lists the routes of a table sorted by prefix.
func (d *Device) Routes(ctx context.Context, table int) ([]gre.Route, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, gre.ErrClosed
	}
	var out []gre.Route
	for _, r := range d.routes {
		if r.Table == table {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b gre.Route) int { return a.Dst.Addr().Compare(b.Dst.Addr()) })
	return out, nil
}

// Forward simulates a data packet to dst leaving through the tunnel: the
// longest matching route over all tables (or the tunnel prefix itself)
// gives the next hop, whose neighbour entry gives the NBMA address. A
// missing entry raises a Miss and returns ErrNoNeighbor.
func (d *Device) Forward(dst netip.Addr) (netip.Addr, error) {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return netip.Addr{}, gre.ErrClosed
	}
	next, ok := d.nextHopLocked(dst)
	if !ok {
		d.mu.Unlock()
		d.stats.Drop(gre.DropNoRoute, 1)
		return netip.Addr{}, ErrNoRoute
	}
	n, ok := d.neigh[next]
	if ok {
		n.LastUsed = time.Now()
		d.neigh[next] = n
	}
	d.mu.Unlock()
	if !ok {
		d.stats.Drop(gre.DropNoNeighbor, 1)
		_ = d.InjectMiss(gre.Miss{NextHop: next, Dst: dst})
		return netip.Addr{}, ErrNoNeighbor
	}
	d.stats.TxPackets.Add(1)
	if p := d.stats.Peer(n.NBMA); p != nil {
		p.TxPackets.Add(1)
	}
	return n.NBMA, nil
}

func (d *Device) nextHopLocked(dst netip.Addr) (netip.Addr, bool) {
	best := -1
	var via netip.Addr
	for _, r := range d.routes {
		if r.Dst.Contains(dst) && r.Dst.Bits() > best {
			best = r.Dst.Bits()
			via = r.Via
			if !via.IsValid() {
				via = dst
			}
		}
	}
	if p := d.info.Prefix; p.IsValid() && p.Masked().Contains(dst) && p.Bits() > best {
		return dst, true
	}
	return via, best >= 0
}

// Counters returns the device's counters.
func (d *Device) Counters() gre.Counters { return d.stats.Snapshot() }

// Close detaches the device from the internet and closes its channels.
func (d *Device) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return gre.ErrClosed
	}
	d.closed = true
	close(d.done)
	close(d.miss)
	d.mu.Unlock()
	nbma := d.Info().NBMA[0]
	d.net.mu.Lock()
	if d.net.nodes[nbma] == d {
		delete(d.net.nodes, nbma)
	}
	d.net.mu.Unlock()
	return nil
}
