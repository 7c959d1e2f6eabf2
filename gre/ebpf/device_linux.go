package ebpf

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/gre/userspace"
)

// Device is the ebpf data plane. It is the userspace backend's Device (its
// TUN, neighbour mirror, NHRP I/O, routes and slow path) with TC programs
// on the TUN's egress and on every other interface's ingress doing the
// forwarding of IPv4 unicast traffic. It implements gre.Device,
// gre.PeerAliaser and gre.IPsecEnforcer.
type Device struct {
	*userspace.Device

	cfg      gre.Config
	tunIndex int
	objs     dataplaneObjects
	att      attacher
	egress   detacher

	mu      sync.Mutex // guards everything below and the config map
	dpCfg   dataplaneDpConfig
	ifs     map[int]*iface
	locals  map[netip.Addr]bool
	neigh   map[netip.Addr]netip.Addr // tunnel address → NBMA
	wire    map[netip.Addr]netip.Addr // NBMA → address on the wire (aliases)
	isIPsec func(ifindex int) bool
	closed  bool
	lastErr error // the last attach error (the slow path covers that interface)

	done chan struct{}
	wg   sync.WaitGroup
}

var (
	_ gre.Device        = (*Device)(nil)
	_ gre.PeerAliaser   = (*Device)(nil)
	_ gre.IPsecEnforcer = (*Device)(nil)
)

// ErrUnsupported is wrapped by Open for a configuration it cannot run.
var ErrUnsupported = errors.New("ebpf: not supported")

// Open loads the BPF programs, opens the userspace backend's device
// (the TUN, the raw sockets, the neighbour mirror) and attaches the
// programs: egress on the TUN, ingress on every other interface, now and
// as interfaces appear. It needs CAP_NET_ADMIN, CAP_NET_RAW and CAP_BPF
// (or CAP_SYS_ADMIN).
func Open(cfg gre.Config) (*Device, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Local.IsValid() && !cfg.Local.Is4() {
		return nil, fmt.Errorf("%w: local address %s", ErrUnsupported, cfg.Local)
	}
	_ = rlimit.RemoveMemlock() // kernels before 5.11 charge maps to RLIMIT_MEMLOCK
	d := &Device{
		cfg:    cfg,
		ifs:    map[int]*iface{},
		locals: map[netip.Addr]bool{},
		neigh:  map[netip.Addr]netip.Addr{},
		wire:   map[netip.Addr]netip.Addr{},
		done:   make(chan struct{}),
	}
	if err := loadDataplaneObjects(&d.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("ebpf: loading the BPF programs: %+v", ve)
		}
		return nil, fmt.Errorf("ebpf: loading the BPF programs: %w", err)
	}
	ud, err := userspace.Open(cfg)
	if err != nil {
		d.objs.Close()
		return nil, err
	}
	d.Device = ud
	info := ud.Info()
	d.tunIndex = info.Index
	d.dpCfg = dataplaneDpConfig{
		Key:        cfg.Key,
		TunIfindex: uint32(info.Index),
		TunMtu:     uint32(info.MTU),
		Ttl:        uint32(cfg.TTLOrDefault()),
	}
	if cfg.Local.IsValid() {
		d.dpCfg.Local = be32(cfg.Local)
	}
	if cfg.Checksum || cfg.Sequence {
		// The programs build GRE with the key only: the slow path sends
		// everything (and receives what carries checksums or numbers).
		d.dpCfg.Flags |= cfgSlowEgress
	}
	if err := d.start(); err != nil {
		d.stop()
		ud.Close()
		return nil, err
	}
	return d, nil
}

// start fills the configuration, attaches the egress program to the TUN
// and the ingress program to the interfaces there are, and follows
// interface and address changes.
func (d *Device) start() error {
	if err := d.objs.Config.Put(uint32(0), d.dpCfg); err != nil {
		return fmt.Errorf("ebpf: config map: %w", err)
	}
	if err := d.attachEgress(); err != nil {
		return err
	}
	return d.follow()
}

// stop detaches every program and closes the maps; the kernel has nothing
// of ours left once the last file descriptor is gone.
func (d *Device) stop() error {
	var errs []error
	if d.egress != nil {
		errs = append(errs, d.egress.detach())
	}
	d.mu.Lock()
	for idx, f := range d.ifs {
		if f.det != nil {
			errs = append(errs, f.det.detach())
		}
		delete(d.ifs, idx)
	}
	d.mu.Unlock()
	errs = append(errs, d.objs.Close())
	return errors.Join(errs...)
}

// Close stops following the kernel, detaches the programs, frees the maps,
// then closes the userspace device (the TUN goes unless KeepState).
func (d *Device) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return gre.ErrClosed
	}
	d.closed = true
	d.mu.Unlock()
	close(d.done)
	d.wg.Wait()
	err := d.stop()
	return errors.Join(err, d.Device.Close())
}

// Info describes the device.
func (d *Device) Info() gre.Info {
	i := d.Device.Info()
	i.Backend, i.Caps = "ebpf", Caps()
	return i
}

// SetNeighbor adds or replaces a neighbour entry: in the mirror (which
// sends what the slow path held for it), then in the fast path's map.
func (d *Device) SetNeighbor(ctx context.Context, n gre.Neighbor) error {
	if err := d.Device.SetNeighbor(ctx, n); err != nil {
		return err
	}
	proto := n.Proto.Unmap()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return gre.ErrClosed
	}
	if !proto.Is4() {
		return nil // IPv6 next hops stay on the slow path
	}
	d.neigh[proto] = n.NBMA
	return d.putNeighbor(proto, n.NBMA)
}

// putNeighbor writes one entry, keeping the time it was last used.
func (d *Device) putNeighbor(proto, nbma netip.Addr) error {
	v := dataplaneNeighbor{Wire: be32(d.wireOf(nbma))}
	var old dataplaneNeighbor
	if d.objs.Neighbors.Lookup(be32(proto), &old) == nil {
		v.LastUsed = old.LastUsed
	}
	if err := d.objs.Neighbors.Put(be32(proto), v); err != nil {
		return fmt.Errorf("ebpf: neighbour %s → %s: %w", proto, nbma, err)
	}
	return nil
}

// DeleteNeighbor removes a neighbour entry from the fast path, then from
// the mirror.
func (d *Device) DeleteNeighbor(ctx context.Context, proto netip.Addr) error {
	proto = proto.Unmap()
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return gre.ErrClosed
	}
	var err error
	if proto.Is4() {
		delete(d.neigh, proto)
		if e := d.objs.Neighbors.Delete(be32(proto)); e != nil && !errors.Is(e, ebpf.ErrKeyNotExist) {
			err = fmt.Errorf("ebpf: delete neighbour %s: %w", proto, e)
		}
	}
	d.mu.Unlock()
	return errors.Join(err, d.Device.DeleteNeighbor(ctx, proto))
}

// Neighbors lists the mirror's entries, with the last use by either path.
func (d *Device) Neighbors(ctx context.Context) ([]gre.Neighbor, error) {
	ns, err := d.Device.Neighbors(ctx)
	if err != nil {
		return nil, err
	}
	now, mono := time.Now(), monotonic()
	for i := range ns {
		if !ns[i].Proto.Is4() {
			continue
		}
		var v dataplaneNeighbor
		if d.objs.Neighbors.Lookup(be32(ns[i].Proto), &v) != nil || v.LastUsed == 0 || v.LastUsed > mono {
			continue
		}
		if t := now.Add(-time.Duration(mono - v.LastUsed)); t.After(ns[i].LastUsed) {
			ns[i].LastUsed = t
		}
	}
	return ns, nil
}

// SetPeerAliases replaces the aliases (IPsec tunnel mode behind NAT) of
// both paths.
func (d *Device) SetPeerAliases(m map[netip.Addr]netip.Addr) error {
	if err := d.Device.SetPeerAliases(m); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.wire = make(map[netip.Addr]netip.Addr, len(m))
	for k, v := range m {
		d.wire[k] = v
	}
	var errs []error
	for proto, nbma := range d.neigh {
		errs = append(errs, d.putNeighbor(proto, nbma))
	}
	return errors.Join(errs...)
}

func (d *Device) wireOf(nbma netip.Addr) netip.Addr {
	if w, ok := d.wire[nbma]; ok {
		return w
	}
	return nbma
}

// RequireIPsec makes the fast path fail closed: GRE leaves only into an
// interface isIPsec accepts (charon's TUN, when its FIB route says so; the
// slow path and the kernel's rules handle the rest), and the ingress gate
// (Config.AcceptIngress) is asked again for every interface, so GRE
// arriving in clear on the NBMA interfaces is dropped and counted.
func (d *Device) RequireIPsec(isIPsec func(ifindex int) bool) error {
	if isIPsec == nil {
		return errors.New("ebpf: RequireIPsec needs the ipsec interface test")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return gre.ErrClosed
	}
	d.isIPsec = isIPsec
	d.dpCfg.Flags |= cfgRequireIPsec
	if err := d.objs.Config.Put(uint32(0), d.dpCfg); err != nil {
		return fmt.Errorf("ebpf: config map: %w", err)
	}
	var errs []error
	for idx, f := range d.ifs {
		errs = append(errs, d.setFlags(idx, f))
	}
	return errors.Join(errs...)
}

// Counters adds the fast path's counters to the slow path's.
func (d *Device) Counters() gre.Counters {
	c := d.Device.Counters()
	st := d.fastStats()
	c.TxPackets += st[stTxPackets]
	c.TxBytes += st[stTxBytes]
	c.RxPackets += st[stRxPackets]
	c.RxBytes += st[stRxBytes]
	c.FastTxPackets, c.FastRxPackets = st[stTxPackets], st[stRxPackets]
	c.FastPath = make(map[string]uint64, 8)
	for _, i := range []int{stTxGSO, stRxGSO, stSlowNeigh, stSlowFrag, stSlowIPsec, stSlowOther, stRxPassed} {
		c.FastPath[StatNames[i]] = st[i]
	}
	addDrop(&c, gre.DropSendError, st[stTxError])
	addDrop(&c, gre.DropIngress, st[stRxRefused])
	addDrop(&c, gre.DropMalformed, st[stRxError])

	d.mu.Lock()
	nbmaOf := make(map[netip.Addr]netip.Addr, len(d.wire))
	for k, v := range d.wire {
		nbmaOf[v] = k
	}
	d.mu.Unlock()
	byPeer := map[netip.Addr]*gre.PeerCounters{}
	for i := range c.Peers {
		byPeer[c.Peers[i].NBMA] = &c.Peers[i]
	}
	var (
		key  uint32
		vals []dataplanePeerStats
	)
	it := d.objs.Peers.Iterate()
	for it.Next(&key, &vals) {
		a := fromBE32(key)
		if n, ok := nbmaOf[a]; ok {
			a = n
		}
		var sum gre.PeerCounters
		for _, v := range vals {
			sum.TxPackets += v.TxPackets
			sum.TxBytes += v.TxBytes
			sum.RxPackets += v.RxPackets
			sum.RxBytes += v.RxBytes
		}
		p := byPeer[a]
		if p == nil {
			c.Peers = append(c.Peers, gre.PeerCounters{NBMA: a})
			p = &c.Peers[len(c.Peers)-1]
			byPeer = reindex(c.Peers)
		}
		p.TxPackets += sum.TxPackets
		p.TxBytes += sum.TxBytes
		p.RxPackets += sum.RxPackets
		p.RxBytes += sum.RxBytes
	}
	slices.SortFunc(c.Peers, func(a, b gre.PeerCounters) int { return a.NBMA.Compare(b.NBMA) })
	return c
}

func reindex(ps []gre.PeerCounters) map[netip.Addr]*gre.PeerCounters {
	m := make(map[netip.Addr]*gre.PeerCounters, len(ps))
	for i := range ps {
		m[ps[i].NBMA] = &ps[i]
	}
	return m
}

func addDrop(c *gre.Counters, r gre.DropReason, n uint64) {
	if n == 0 {
		return
	}
	if c.Drops == nil {
		c.Drops = map[string]uint64{}
	}
	c.Drops[r.String()] += n
}

// Stats index names of dataplane.c's enum.
const (
	stTxPackets = iota
	stTxBytes
	stRxPackets
	stRxBytes
	stTxGSO
	stRxGSO
	stSlowNeigh
	stSlowFrag
	stSlowIPsec
	stSlowOther
	stTxError
	stRxRefused
	stRxError
	stRxPassed
	stMax
)

// StatNames name the fast path's own counters (FastStats).
var StatNames = [stMax]string{
	"tx_packets", "tx_bytes", "rx_packets", "rx_bytes", "tx_gso", "rx_gso",
	"slow_no_neighbor", "slow_too_big", "slow_ipsec", "slow_other",
	"tx_error", "rx_refused", "rx_error", "rx_passed",
}

// dataplane.c's config flags.
const (
	cfgRequireIPsec = 1
	cfgSlowEgress   = 2
)

func (d *Device) fastStats() [stMax]uint64 {
	var out [stMax]uint64
	for i := range out {
		var per []uint64
		if d.objs.Stats.Lookup(uint32(i), &per) != nil {
			continue
		}
		for _, v := range per {
			out[i] += v
		}
	}
	return out
}

// FastStats returns the fast path's counters by StatNames.
func (d *Device) FastStats() map[string]uint64 {
	st := d.fastStats()
	m := make(map[string]uint64, len(st))
	for i, v := range st {
		m[StatNames[i]] = v
	}
	return m
}

// be32 is an IPv4 address as the BPF programs hold it: network byte order
// in memory.
func be32(a netip.Addr) uint32 {
	b := a.Unmap().As4()
	return binary.NativeEndian.Uint32(b[:])
}

func fromBE32(v uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// monotonic is bpf_ktime_get_ns's clock.
func monotonic() uint64 {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) != nil {
		return 0
	}
	return uint64(ts.Nano())
}

// Available reports whether this kernel and these privileges load the
// programs (the tests' skip check; Open says the same, and more).
func Available() error {
	_ = rlimit.RemoveMemlock()
	var objs dataplaneObjects
	if err := loadDataplaneObjects(&objs, nil); err != nil {
		return fmt.Errorf("ebpf: loading the BPF programs: %w", err)
	}
	return objs.Close()
}
