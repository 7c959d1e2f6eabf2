package userspace

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/gre/internal/inet"
	"github.com/opendmvpn/dmvpn/gre/internal/nlops"
)

// Tunables. The hold queue follows the kernel's unresolved queue in
// spirit: a few packets per next hop, held for about as long as a
// resolution takes.
const (
	holdPerHop      = 8
	holdTotal       = 512
	holdMaxAge      = 3 * time.Second
	missInterval    = time.Second // one event per next hop per second
	missBurst       = 200         // events per second overall
	icmpInterval    = 100 * time.Millisecond
	pmtuLifetime    = 10 * time.Minute // the kernel's mtu_expires
	nhrpQueueLen    = 8192             // a hub takes registration storms of thousands
	missQueueLen    = 256
	rxBatch         = 64
	bufSize         = 65535 + 1
	txHeadroom      = ipv4HdrLen + 16 // outer IPv4 + the longest GRE header
	rxTunOffset     = 16              // tun.Write needs >= 10 bytes in front
	minPathMTU      = 552             // the kernel's min_pmtu
	defaultUnderlay = 1500
)

// Device is the userspace GRE data plane. It implements gre.Device.
type Device struct {
	cfg      gre.Config
	tun      tun.Device
	tunFile  *os.File
	tunIndex int
	greLen   int
	local4   [4]byte
	mtu      atomic.Int64

	snd  *rawSender
	rcv  *rawReceiver
	rbuf [][]byte
	nlh  *netlink.Handle
	nlOp nlops.Netlink
	// uplinks follows the uplink addresses (Info.NBMA) without Local.
	uplinks *nlops.Uplinks

	stats        gre.Stats
	routeGen     atomic.Uint64
	resubscribes atomic.Uint64
	locals       atomic.Pointer[map[netip.Addr]struct{}]
	nlSock       atomic.Pointer[nl.NetlinkSocket]

	neigh neighTable
	mcast gre.MulticastList
	alias atomic.Pointer[aliasTable]
	pmtu  pmtuTable

	holdMu  sync.Mutex
	hold    *HoldQueue
	limiter *MissLimiter
	icmpLim *MissLimiter

	icmp6Mu sync.Mutex
	icmp6   *icmp6Sender

	rxCount rxCounter // receive goroutine only

	ipid atomic.Uint32
	seq  atomic.Uint32

	misses chan gre.Miss
	nhrp   chan nhrpPacket
	done   chan struct{}

	closeMu   sync.Mutex
	closed    atomic.Bool
	wg        sync.WaitGroup
	lastHouse time.Time
}

type neighbor struct {
	n        gre.Neighbor
	nbma4    [4]byte
	lastUsed atomic.Int64 // unix nanoseconds
	peer     *gre.PeerStats
}

type nhrpPacket struct {
	from netip.Addr
	b    []byte
}

var _ gre.Device = (*Device)(nil)

// Open creates the TUN device cfg.Name (or attaches to a persistent one
// of that name: one a crashed run left, with its routes), addresses it,
// opens the raw sockets and starts the forwarding goroutines. The TUN is
// persistent while the device is open. It needs CAP_NET_ADMIN and
// CAP_NET_RAW.
func Open(cfg gre.Config) (*Device, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	d := &Device{
		cfg:     cfg,
		greLen:  cfg.HeaderLen(),
		nlOp:    nlops.Real{},
		hold:    NewHoldQueue(holdPerHop, holdTotal, holdMaxAge),
		limiter: NewMissLimiter(missInterval, missBurst),
		icmpLim: NewMissLimiter(icmpInterval, 100),
		misses:  make(chan gre.Miss, missQueueLen),
		nhrp:    make(chan nhrpPacket, nhrpQueueLen),
		done:    make(chan struct{}),
	}
	if cfg.Local.IsValid() {
		d.local4 = cfg.Local.As4()
	}
	if err := d.open(); err != nil {
		d.release()
		return nil, err
	}
	d.wg.Add(4)
	go d.txLoop()
	go d.rxLoop()
	go d.mirrorLoop()
	go d.tunEvents()
	return d, nil
}

// open acquires the TUN, the sockets and the netlink handle.
func (d *Device) open() error {
	mtu := d.cfg.MTU
	if mtu == 0 {
		mtu = underlayMTU(d.cfg.Local) - ipv4HdrLen - d.greLen
	}
	t, err := tun.CreateTUN(d.cfg.Name, mtu)
	if err != nil {
		return fmt.Errorf("userspace: create TUN %s: %w", d.cfg.Name, err)
	}
	d.tun, d.tunFile = t, t.File()
	d.mtu.Store(int64(mtu))
	link, err := netlink.LinkByName(d.cfg.Name)
	if err != nil {
		return fmt.Errorf("userspace: find %s: %w", d.cfg.Name, err)
	}
	d.tunIndex = link.Attrs().Index
	// Persistent while the data plane runs: if the process dies (a
	// crash, SIGKILL) the TUN stays with every route through it, and the
	// next run attaches to it. Close takes the persistence back unless
	// KeepState.
	if err := d.setPersist(true); err != nil {
		return err
	}
	if p := d.cfg.Prefix; p.IsValid() {
		ipn := nlops.IPNet(p)
		ipn.IP = nlops.IP(p.Addr()) // the host part is the address
		if err := netlink.AddrReplace(link, &netlink.Addr{IPNet: ipn}); err != nil {
			return fmt.Errorf("userspace: address %s on %s: %w", p, d.cfg.Name, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("userspace: set %s up: %w", d.cfg.Name, err)
	}
	if d.snd, err = newRawSender(d.tun.BatchSize()); err != nil {
		return fmt.Errorf("userspace: %w", err)
	}
	d.rbuf = make([][]byte, rxBatch)
	for i := range d.rbuf {
		d.rbuf[i] = make([]byte, bufSize)
	}
	if d.rcv, err = newRawReceiver(d.cfg.Local, d.rbuf); err != nil {
		return fmt.Errorf("userspace: %w", err)
	}
	if d.nlh, err = netlink.NewHandle(unix.NETLINK_ROUTE); err != nil {
		return fmt.Errorf("userspace: netlink handle: %w", err)
	}
	d.refreshLocals()
	if !d.cfg.Local.IsValid() {
		d.uplinks = nlops.WatchUplinks(d.tunIndex)
	}
	return nil
}

// underlayMTU is the MTU of the interface that carries traffic from the
// local NBMA address, else of the first interface holding an IPv4 default
// route, else 1500.
func underlayMTU(local netip.Addr) int {
	links, _ := netlink.LinkList()
	if local.IsValid() {
		for _, l := range links {
			as, _ := netlink.AddrList(l, netlink.FAMILY_V4)
			for _, a := range as {
				if nlops.Addr(a.IP) == local {
					return l.Attrs().MTU
				}
			}
		}
	}
	for _, idx := range nlops.DefaultRouteLinks() {
		if l, err := netlink.LinkByIndex(idx); err == nil && l.Attrs().MTU >= 576 {
			return l.Attrs().MTU
		}
	}
	return defaultUnderlay
}

func (d *Device) setPersist(on bool) error {
	v := 0
	if on {
		v = 1
	}
	sc, err := d.tunFile.SyscallConn()
	if err != nil {
		return fmt.Errorf("userspace: TUN fd: %w", err)
	}
	var ierr error
	if err := sc.Control(func(fd uintptr) { ierr = unix.IoctlSetInt(int(fd), unix.TUNSETPERSIST, v) }); err != nil {
		return fmt.Errorf("userspace: TUN fd: %w", err)
	}
	if ierr != nil {
		return fmt.Errorf("userspace: TUNSETPERSIST %d: %w", v, ierr)
	}
	return nil
}

// tunEvents drains the TUN's event channel (the tun package blocks its
// watchers when nobody reads it) and follows MTU changes. It ends when
// Close closes the TUN, which closes the channel.
func (d *Device) tunEvents() {
	defer d.wg.Done()
	for ev := range d.tun.Events() {
		if ev&tun.EventMTUUpdate != 0 {
			d.refreshMTU()
		}
	}
}

// release frees whatever open acquired.
func (d *Device) release() {
	if d.tun != nil {
		if !d.cfg.KeepState {
			_ = d.setPersist(false)
		}
		d.tun.Close()
	}
	if d.snd != nil {
		d.snd.close()
	}
	if d.rcv != nil {
		d.rcv.close()
	}
	if d.nlh != nil {
		d.nlh.Close()
	}
	if d.uplinks != nil {
		d.uplinks.Close()
	}
	d.icmp6Mu.Lock()
	if d.icmp6 != nil {
		d.icmp6.close()
	}
	d.icmp6Mu.Unlock()
}

func (d *Device) isClosed() bool { return d.closed.Load() }

// sleep waits for dur or until Close; true means closed.
func (d *Device) sleep(dur time.Duration) bool {
	t := time.NewTimer(dur)
	defer t.Stop()
	select {
	case <-d.done:
		return true
	case <-t.C:
		return false
	}
}

// Close stops the goroutines (transmit, receive, netlink mirror, in that
// order of wake-up: the TUN, the GRE socket, the netlink socket are
// closed or shut down), then releases the TUN and sockets and closes the
// Misses channel. With KeepState the TUN stays (persistent) with its
// routes.
func (d *Device) Close() error {
	d.closeMu.Lock()
	defer d.closeMu.Unlock()
	if d.closed.Swap(true) {
		return gre.ErrClosed
	}
	close(d.done)
	if !d.cfg.KeepState {
		_ = d.setPersist(false)
	}
	err := d.tun.Close()
	if errors.Is(err, unix.EPIPE) {
		// The tun package wakes its link listener through a pipe; a
		// listener that saw the shutdown first has closed the pipe's
		// other end. The TUN itself is closed either way.
		err = nil
	}
	d.rcv.shutdown()
	if s := d.nlSock.Load(); s != nil {
		s.Close()
	}
	d.wg.Wait()
	d.tun = nil // already closed
	d.release()
	close(d.misses)
	if err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("userspace: close TUN: %w", err)
	}
	return nil
}

// Info describes the device.
func (d *Device) Info() gre.Info {
	info := gre.Info{
		Name: d.cfg.Name, Index: d.tunIndex, Key: d.cfg.Key, HasKey: true,
		Prefix: d.cfg.Prefix, MTU: int(d.mtu.Load()), Backend: "userspace", Caps: Caps(),
	}
	if d.cfg.Local.IsValid() {
		info.NBMA = []netip.Addr{d.cfg.Local}
	} else {
		info.NBMA = d.localNBMA()
	}
	return info
}

// localNBMA lists the node's uplink addresses, as the watcher last saw
// them (no netlink dump per call).
func (d *Device) localNBMA() []netip.Addr {
	if d.uplinks == nil {
		return nil
	}
	return slices.Clone(d.uplinks.Addrs())
}

// Counters returns the data-plane counters. GRE the raw socket's full
// receive buffer lost before the reader got it counts as rcvbuf_full (the
// queue toward the engine counts queue_full).
func (d *Device) Counters() gre.Counters {
	c := d.stats.Snapshot()
	if d.rcv != nil && !d.isClosed() {
		if n, err := inet.SocketDrops(d.rcv.fd); err == nil && n > 0 {
			c.Drops[gre.DropRcvbufFull.String()] += n
		}
	}
	return c
}

// Misses delivers neighbour-miss events; Close closes the channel.
func (d *Device) Misses() <-chan gre.Miss { return d.misses }

// ReadNHRP blocks until an NHRP packet arrives.
func (d *Device) ReadNHRP(b []byte) (int, netip.Addr, error) {
	select {
	case p := <-d.nhrp:
		return copy(b, p.b), p.from, nil
	case <-d.done:
		return 0, netip.Addr{}, gre.ErrClosed
	}
}

// WriteNHRP sends an NHRP packet to an NBMA address.
func (d *Device) WriteNHRP(b []byte, to netip.Addr) error {
	if d.isClosed() {
		return gre.ErrClosed
	}
	if !to.Is4() {
		return fmt.Errorf("userspace: NHRP to %v: NBMA must be IPv4", to)
	}
	pkt := make([]byte, txHeadroom+len(b))
	copy(pkt[txHeadroom:], b)
	out := d.encapsulate(pkt, txHeadroom, len(b), gre.ProtoNHRP, 0, true, to.As4())
	if err := d.snd.sendOne(out); err != nil {
		d.stats.Drop(gre.DropSendError, 1)
		return fmt.Errorf("userspace: send NHRP to %s: %w", to, err)
	}
	d.stats.NHRPTx.Add(1)
	return nil
}

// SetMulticast sets the NBMA list multicast and broadcast packets go to.
func (d *Device) SetMulticast(nbma []netip.Addr) error {
	if d.isClosed() {
		return gre.ErrClosed
	}
	for _, a := range nbma {
		if !a.Is4() {
			return fmt.Errorf("userspace: multicast NBMA %v is not IPv4", a)
		}
	}
	d.mcast.Set(nbma)
	return nil
}

var _ gre.MulticastUpdater = (*Device)(nil)

// UpdateMulticast implements gre.MulticastUpdater.
func (d *Device) UpdateMulticast(add, remove []netip.Addr) error {
	if d.isClosed() {
		return gre.ErrClosed
	}
	for _, a := range add {
		if !a.Is4() {
			return fmt.Errorf("userspace: multicast NBMA %v is not IPv4", a)
		}
	}
	d.mcast.Update(add, remove)
	return nil
}

// ReplaceRoute adds or replaces a route through the TUN.
func (d *Device) ReplaceRoute(ctx context.Context, r gre.Route) error {
	if err := d.check(ctx); err != nil {
		return err
	}
	nr, err := nlops.RouteToNetlink(r, d.tunIndex)
	if err != nil {
		return fmt.Errorf("userspace: %w", err)
	}
	if err := d.nlOp.RouteReplace(nr); err != nil {
		return fmt.Errorf("userspace: replace route %s: %w", r.Dst, err)
	}
	return nil
}

// DeleteRoute removes a route through the TUN.
func (d *Device) DeleteRoute(ctx context.Context, r gre.Route) error {
	if err := d.check(ctx); err != nil {
		return err
	}
	nr, err := nlops.RouteToNetlink(r, d.tunIndex)
	if err != nil {
		return fmt.Errorf("userspace: %w", err)
	}
	if err := nlops.IgnoreNotFound(d.nlOp.RouteDel(nr)); err != nil {
		return fmt.Errorf("userspace: delete route %s: %w", r.Dst, err)
	}
	return nil
}

// Routes lists the routes through the TUN in a table (0 = main).
func (d *Device) Routes(ctx context.Context, table int) ([]gre.Route, error) {
	if err := d.check(ctx); err != nil {
		return nil, err
	}
	rs, err := nlops.ListRoutes(d.nlOp, d.tunIndex, table)
	if err != nil {
		return nil, fmt.Errorf("userspace: %w", err)
	}
	return rs, nil
}

func (d *Device) check(ctx context.Context) error {
	if d.isClosed() {
		return gre.ErrClosed
	}
	return ctx.Err()
}
