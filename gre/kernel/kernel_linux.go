package kernel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/gre/internal/nlops"
)

// ErrNotMGRE is returned when a link of the configured name exists but is
// not a multipoint GRE device with the configured key.
var ErrNotMGRE = errors.New("kernel: existing link is not a matching multipoint GRE device")

// env is what a Device needs from the system; tests replace it.
type env struct {
	nl nlops.Netlink
	// listenNHRP opens the NHRP socket on the device.
	listenNHRP func(ifindex int) (nhrpConn, error)
	// listenMulticast opens the multicast capture socket on the device.
	listenMulticast func(ifindex int, tunnel netip.Prefix) (mcastConn, error)
	// newNeighWriter opens the batched neighbour writer (nil: entries
	// are set one request at a time through nl).
	newNeighWriter func() (neighApplier, error)
	// now is the clock neighbour ages are read against (nil: time.Now).
	now func() time.Time
}

// Device is the kernel GRE data plane. It implements gre.Device.
type Device struct {
	cfg     gre.Config
	env     env
	link    netlink.Link
	index   int
	created bool
	nhrp    nhrpConn
	stats   gre.Stats
	// rxq and txq carry NHRP packets between the engine and the socket's
	// reader and writer goroutines.
	rxq chan rxPacket
	txq chan nhrpMsg
	// uplinks follows the uplink addresses (Info.NBMA) without Local.
	uplinks *nlops.Uplinks
	// nw programs neighbours in batches (nil: one at a time).
	nw neighApplier

	mcast   gre.MulticastList
	mcConn  mcastConn
	mcMu    sync.Mutex
	misses  chan gre.Miss
	done    chan struct{}
	closed  atomic.Bool
	closeMu sync.Mutex
	wg      sync.WaitGroup
	txWG    sync.WaitGroup // the writer, which sends what is queued before the socket closes
}

var _ gre.Device = (*Device)(nil)

// Open creates the multipoint GRE device cfg.Name, or adopts an existing
// one with the same key, configures it for NHRP and opens the NHRP socket.
// It needs CAP_NET_ADMIN and CAP_NET_RAW and a kernel with ip_gre.
func Open(cfg gre.Config) (*Device, error) {
	return open(cfg, env{nl: nlops.Real{}, listenNHRP: listenNHRP, listenMulticast: listenMulticast,
		newNeighWriter: func() (neighApplier, error) { return nlops.NewNeighWriter() }})
}

func open(cfg gre.Config, e env) (*Device, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	d := &Device{cfg: cfg, env: e, misses: make(chan gre.Miss, 256), done: make(chan struct{}),
		rxq: make(chan rxPacket, rxQueueLen), txq: make(chan nhrpMsg, txQueueLen)}
	if err := d.setup(); err != nil {
		d.teardown()
		return nil, err
	}
	d.wg.Add(2)
	go d.missLoop()
	go d.rxLoop()
	d.txWG.Add(1)
	go d.txLoop()
	return d, nil
}

// linkSpec is the ip_gre device Open creates: key both ways, fixed TTL with
// path-MTU discovery, no remote (multipoint), checksum and sequence numbers
// on send when configured. Local must be an IPv4
// address — 0.0.0.0 for "any" — or netlink builds an ip6gre device.
func linkSpec(cfg gre.Config) *netlink.Gretun {
	local := net.IPv4zero.To4()
	if cfg.Local.IsValid() {
		local = nlops.IP(cfg.Local).To4()
	}
	oflags := uint16(nl.GRE_KEY)
	if cfg.Checksum {
		oflags |= nl.GRE_CSUM
	}
	if cfg.Sequence {
		oflags |= nl.GRE_SEQ
	}
	return &netlink.Gretun{
		LinkAttrs: netlink.LinkAttrs{Name: cfg.Name, MTU: cfg.MTU},
		Local:     local,
		IKey:      cfg.Key,
		OKey:      cfg.Key,
		IFlags:    nl.GRE_KEY, // received checksums and sequence numbers are accepted, not required
		OFlags:    oflags,
		Ttl:       cfg.TTLOrDefault(),
		PMtuDisc:  1,
	}
}

// adoptable reports whether an existing link can serve as the tunnel.
func adoptable(l netlink.Link, cfg gre.Config) error {
	g, ok := l.(*netlink.Gretun)
	if !ok || l.Type() != "gre" {
		return fmt.Errorf("%w: %s is a %s link", ErrNotMGRE, cfg.Name, l.Type())
	}
	if g.Remote != nil && !g.Remote.IsUnspecified() {
		return fmt.Errorf("%w: %s has remote %s (point-to-point)", ErrNotMGRE, cfg.Name, g.Remote)
	}
	if g.IKey != cfg.Key || g.OKey != cfg.Key || g.IFlags&nl.GRE_KEY == 0 || g.OFlags&nl.GRE_KEY == 0 {
		return fmt.Errorf("%w: %s has keys %d/%d, want %d", ErrNotMGRE, cfg.Name, g.IKey, g.OKey, cfg.Key)
	}
	return nil
}

// sysctls are the per-device settings OpenNHRP and FRR's nhrpd apply:
// no ICMP redirects, and neighbour resolution handed to userspace
// (app_solicit) without ARP probes on the wire.
func sysctls(dev string) [][2]string {
	return [][2]string{
		{"net/ipv4/conf/" + dev + "/send_redirects", "0"},
		{"net/ipv4/conf/all/send_redirects", "0"},
		{"net/ipv4/neigh/" + dev + "/app_solicit", "1"},
		{"net/ipv4/neigh/" + dev + "/ucast_solicit", "0"},
		{"net/ipv4/neigh/" + dev + "/mcast_solicit", "0"},
	}
}

func (d *Device) setup() error {
	n := d.env.nl
	l, err := n.LinkByName(d.cfg.Name)
	var nf netlink.LinkNotFoundError
	switch {
	case err == nil:
		if err := adoptable(l, d.cfg); err != nil {
			return err
		}
	case errors.As(err, &nf):
		if err := n.LinkAdd(linkSpec(d.cfg)); err != nil {
			return fmt.Errorf("kernel: create GRE device %s: %w", d.cfg.Name, err)
		}
		d.created = true
		if l, err = n.LinkByName(d.cfg.Name); err != nil {
			return fmt.Errorf("kernel: find created %s: %w", d.cfg.Name, err)
		}
	default:
		return fmt.Errorf("kernel: look up %s: %w", d.cfg.Name, err)
	}
	d.link, d.index = l, l.Attrs().Index
	if p := d.cfg.Prefix; p.IsValid() {
		ipn := nlops.IPNet(p)
		ipn.IP = nlops.IP(p.Addr())
		if err := n.AddrReplace(l, &netlink.Addr{IPNet: ipn}); err != nil {
			return fmt.Errorf("kernel: address %s on %s: %w", p, d.cfg.Name, err)
		}
	}
	if err := n.LinkSetARPOn(l); err != nil {
		return fmt.Errorf("kernel: arp on %s: %w", d.cfg.Name, err)
	}
	var errs []error
	for _, s := range sysctls(d.cfg.Name) {
		if err := n.WriteSysctl(s[0], s[1]); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("kernel: %w", err)
	}
	if err := n.LinkSetUp(l); err != nil {
		return fmt.Errorf("kernel: set %s up: %w", d.cfg.Name, err)
	}
	if d.nhrp, err = d.env.listenNHRP(d.index); err != nil {
		return fmt.Errorf("kernel: NHRP socket on %s: %w", d.cfg.Name, err)
	}
	if d.env.newNeighWriter != nil {
		if d.nw, err = d.env.newNeighWriter(); err != nil {
			return fmt.Errorf("kernel: %w", err)
		}
	}
	if _, real := n.(nlops.Real); real && !d.cfg.Local.IsValid() {
		d.uplinks = nlops.WatchUplinks(d.index)
	}
	return nil
}

// teardown releases sockets and, unless KeepState, a device Open created.
func (d *Device) teardown() error {
	var errs []error
	if d.nhrp != nil {
		errs = append(errs, d.nhrp.Close())
	}
	d.mcMu.Lock()
	if d.mcConn != nil {
		errs = append(errs, d.mcConn.Close())
		d.mcConn = nil
	}
	d.mcMu.Unlock()
	if d.uplinks != nil {
		d.uplinks.Close()
	}
	if d.nw != nil {
		errs = append(errs, d.nw.Close())
	}
	if d.created && !d.cfg.KeepState && d.link != nil {
		if err := d.env.nl.LinkDel(d.link); err != nil {
			errs = append(errs, fmt.Errorf("kernel: delete %s: %w", d.cfg.Name, err))
		}
	}
	return errors.Join(errs...)
}

// Close stops the NHRP reader, the miss subscription and the multicast
// replicator, closes the sockets, deletes the device if Open created it
// (unless KeepState), and closes Misses.
func (d *Device) Close() error {
	d.closeMu.Lock()
	defer d.closeMu.Unlock()
	if d.closed.Swap(true) {
		return gre.ErrClosed
	}
	close(d.done)
	d.txWG.Wait()
	err := d.teardown()
	d.wg.Wait()
	close(d.misses)
	return err
}

func (d *Device) check(ctx context.Context) error {
	if d.closed.Load() {
		return gre.ErrClosed
	}
	return ctx.Err()
}

// Info describes the device.
func (d *Device) Info() gre.Info {
	info := gre.Info{Name: d.cfg.Name, Index: d.index, Key: d.cfg.Key, HasKey: true, Prefix: d.cfg.Prefix, Backend: "kernel", Caps: Caps}
	if d.link != nil {
		info.MTU = d.link.Attrs().MTU
	}
	if d.cfg.Local.IsValid() {
		info.NBMA = []netip.Addr{d.cfg.Local}
	} else if d.uplinks != nil {
		info.NBMA = slices.Clone(d.uplinks.Addrs())
	}
	return info
}

// Counters returns NHRP and miss counters, and the device's packet
// counters from the kernel (no per-peer split: the kernel keeps none).
func (d *Device) Counters() gre.Counters {
	c := d.stats.Snapshot()
	if l, err := d.env.nl.LinkByName(d.cfg.Name); err == nil && l.Attrs().Statistics != nil {
		s := l.Attrs().Statistics
		c.TxPackets, c.TxBytes, c.RxPackets, c.RxBytes = s.TxPackets, s.TxBytes, s.RxPackets, s.RxBytes
		if s.TxDropped+s.TxErrors > 0 {
			c.Drops[gre.DropSendError.String()] += s.TxDropped + s.TxErrors
		}
		if s.RxDropped+s.RxErrors > 0 {
			c.Drops[gre.DropMalformed.String()] += s.RxDropped + s.RxErrors
		}
	}
	// NHRP the socket's full receive buffer lost before the reader got it
	// (the queue behind the reader counts queue_full).
	if dc, ok := d.nhrp.(interface{ Drops() (uint64, bool) }); ok {
		if n, ok := dc.Drops(); ok && n > 0 {
			c.Drops[gre.DropRcvbufFull.String()] += n
		}
	}
	return c
}

// ReadNHRP blocks until an NHRP packet arrives on the device.
func (d *Device) ReadNHRP(b []byte) (int, netip.Addr, error) {
	select {
	case p := <-d.rxq:
		n := copy(b, p.b)
		putPkt(p.b)
		return n, p.from, nil
	case <-d.done:
		return 0, netip.Addr{}, gre.ErrClosed
	}
}

// WriteNHRP queues an NHRP packet for an NBMA address; the writer sends
// what is queued in batches. It blocks while the queue is full.
func (d *Device) WriteNHRP(b []byte, to netip.Addr) error {
	if d.closed.Load() {
		return gre.ErrClosed
	}
	if !to.Is4() {
		return fmt.Errorf("kernel: NHRP to %v: NBMA must be IPv4", to)
	}
	if len(b) == 0 || len(b) > rxBufSize {
		return fmt.Errorf("kernel: NHRP packet of %d bytes", len(b))
	}
	m := nhrpMsg{B: pktBuf(b), Peer: to}
	select {
	case d.txq <- m:
		return nil
	case <-d.done:
		putPkt(m.B)
		return gre.ErrClosed
	}
}

// SetNeighbor adds or replaces a neighbour entry (4-byte lladdr).
func (d *Device) SetNeighbor(ctx context.Context, n gre.Neighbor) error {
	return d.ApplyNeighbors(ctx, []gre.NeighborOp{{Neighbor: n}})[0]
}

// DeleteNeighbor removes a neighbour entry.
func (d *Device) DeleteNeighbor(ctx context.Context, proto netip.Addr) error {
	return d.ApplyNeighbors(ctx, []gre.NeighborOp{{Neighbor: gre.Neighbor{Proto: proto}, Delete: true}})[0]
}

// userHZ is the unit of the kernel's neighbour ages (ndm_used, …): clock
// ticks of USER_HZ, 100 per second on every Linux ABI.
const userHZ = 100

// Neighbors lists the resolved neighbour entries of the device. LastUsed
// is when the kernel last marked the entry used: not every packet (an
// entry in the reachable state is not marked), but each time traffic finds
// it stale and makes the kernel re-confirm it (every base_reachable_time,
// 15–45 s by default, while in use).
func (d *Device) Neighbors(ctx context.Context) ([]gre.Neighbor, error) {
	if err := d.check(ctx); err != nil {
		return nil, err
	}
	ns, err := d.env.nl.NeighList(d.index, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("kernel: list neighbours: %w", err)
	}
	now := time.Now
	if d.env.now != nil {
		now = d.env.now
	}
	t := now()
	out := make([]gre.Neighbor, 0, len(ns))
	for _, n := range ns {
		if g, ok := nlops.NeighFromNetlink(n); ok {
			g.LastUsed = t.Add(-time.Duration(n.Used) * time.Second / userHZ)
			out = append(out, g)
		}
	}
	slices.SortFunc(out, func(a, b gre.Neighbor) int { return a.Proto.Compare(b.Proto) })
	return out, nil
}

// Misses delivers neighbour-miss events; Close closes the channel.
func (d *Device) Misses() <-chan gre.Miss { return d.misses }

// missLoop turns the kernel's RTM_GETNEIGH resolution requests for the
// device into Miss events, resubscribing when the subscription fails.
func (d *Device) missLoop() {
	defer d.wg.Done()
	for {
		ch := make(chan netlink.NeighUpdate, 256)
		sub := make(chan struct{})
		if err := d.env.nl.NeighSubscribe(ch, sub, func(error) {}); err != nil {
			select {
			case <-d.done:
				return
			case <-time.After(time.Second):
				continue
			}
		}
		if !d.follow(ch) {
			close(sub)
			return
		}
		close(sub)
		select {
		case <-d.done:
			return
		case <-time.After(100 * time.Millisecond): // then resubscribe
		}
	}
}

// follow handles one subscription; false when the device closed.
func (d *Device) follow(ch <-chan netlink.NeighUpdate) bool {
	for {
		select {
		case <-d.done:
			return false
		case u, ok := <-ch:
			if !ok {
				return true
			}
			if u.Type != syscall.RTM_GETNEIGH || u.LinkIndex != d.index {
				continue
			}
			nh := nlops.Addr(u.IP)
			if !nh.IsValid() {
				continue
			}
			select {
			case d.misses <- gre.Miss{NextHop: nh}:
				d.stats.Misses.Add(1)
			default:
				d.stats.Drop(gre.DropQueueFull, 1)
			}
		}
	}
}

// ReplaceRoute adds or replaces a route through the device.
func (d *Device) ReplaceRoute(ctx context.Context, r gre.Route) error {
	if err := d.check(ctx); err != nil {
		return err
	}
	nr, err := nlops.RouteToNetlink(r, d.index)
	if err != nil {
		return fmt.Errorf("kernel: %w", err)
	}
	if err := d.env.nl.RouteReplace(nr); err != nil {
		return fmt.Errorf("kernel: replace route %s: %w", r.Dst, err)
	}
	return nil
}

// DeleteRoute removes a route through the device.
func (d *Device) DeleteRoute(ctx context.Context, r gre.Route) error {
	if err := d.check(ctx); err != nil {
		return err
	}
	nr, err := nlops.RouteToNetlink(r, d.index)
	if err != nil {
		return fmt.Errorf("kernel: %w", err)
	}
	if err := nlops.IgnoreNotFound(d.env.nl.RouteDel(nr)); err != nil {
		return fmt.Errorf("kernel: delete route %s: %w", r.Dst, err)
	}
	return nil
}

// Routes lists the routes through the device in a table (0 = main).
func (d *Device) Routes(ctx context.Context, table int) ([]gre.Route, error) {
	if err := d.check(ctx); err != nil {
		return nil, err
	}
	rs, err := nlops.ListRoutes(d.env.nl, d.index, table)
	if err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}
	return rs, nil
}
