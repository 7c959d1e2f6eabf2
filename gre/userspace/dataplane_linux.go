package userspace

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/opendmvpn/dmvpn/gre"
)

// encapsulate writes the outer IPv4 and GRE headers in front of the n-byte
// payload at buf[off:] and returns the datagram.
func (d *Device) encapsulate(buf []byte, off, n int, proto uint16, tos uint8, df bool, dst [4]byte) []byte {
	start := off - d.greLen - ipv4HdrLen
	putOuter4(buf[start:], d.local4, d.wireAddr(dst), tos, d.cfg.TTLOrDefault(), df, uint16(d.ipid.Add(1)))
	h := gre.Header{Protocol: proto, HasKey: true, Key: d.cfg.Key, HasChecksum: d.cfg.Checksum, HasSeq: d.cfg.Sequence}
	if h.HasSeq {
		h.Seq = d.seq.Add(1)
	}
	h.Marshal(buf[start+ipv4HdrLen : off+n])
	return buf[start : off+n]
}

// prepare checks a data packet at buf[txHeadroom:][:n] against the path
// MTU toward nb and encapsulates it; false when it was dropped.
func (d *Device) prepare(buf []byte, n int, in inner, nb *neighbor, now time.Time) ([]byte, bool) {
	df := true
	if pm := d.pmtu.get(nb.n.NBMA, now); pm != 0 && ipv4HdrLen+d.greLen+n > pm {
		if in.df {
			d.tooBig(buf[txHeadroom:txHeadroom+n], in, pm-ipv4HdrLen-d.greLen)
			d.stats.Drop(gre.DropTooBig, 1)
			return nil, false
		}
		df = false // let the path fragment the outer packet, as for the inner one
	}
	proto := uint16(gre.ProtoIPv4)
	if in.v6 {
		proto = gre.ProtoIPv6
	}
	return d.encapsulate(buf, txHeadroom, n, proto, in.tos, df, nb.nbma4), true
}

// sendSingle sends one data packet (held, replicated) outside the batch.
func (d *Device) sendSingle(buf []byte, n int, in inner, nb *neighbor) {
	out, ok := d.prepare(buf, n, in, nb, time.Now())
	if !ok {
		return
	}
	if err := d.snd.sendOne(out); err != nil {
		d.sendFailed(err)
		return
	}
	d.countTx(nb, n)
	nb.lastUsed.Store(time.Now().UnixNano())
}

func (d *Device) countTx(nb *neighbor, n int) {
	d.stats.TxPackets.Add(1)
	d.stats.TxBytes.Add(uint64(n))
	if nb.peer != nil {
		nb.peer.TxPackets.Add(1)
		nb.peer.TxBytes.Add(uint64(n))
	}
}

// sendFailed counts a datagram the kernel refused and learns the MTU when
// it was too big.
func (d *Device) sendFailed(err error) {
	if errors.Is(err, unix.EMSGSIZE) {
		d.stats.Drop(gre.DropTooBig, 1)
		d.learnPMTU(d.snd.fd)
		return
	}
	d.stats.Drop(gre.DropSendError, 1)
}

// learnPMTU reads path-MTU reports from a socket's error queue.
func (d *Device) learnPMTU(fd int) {
	exp := time.Now().Add(pmtuLifetime)
	for _, r := range readErrQueue(fd) {
		if r.mtu >= minPathMTU {
			d.pmtu.set(d.peerAddr(r.dst), r.mtu, exp)
		}
	}
}

var icmpMu sync.Mutex

// tooBig tells the sender of orig that the tunnel path takes at most mtu
// bytes: ICMP fragmentation needed (IPv4) or packet too big (IPv6),
// rate-limited per sender. The kernel picks the source address, as for an
// error it generates itself.
func (d *Device) tooBig(orig []byte, in inner, mtu int) {
	icmpMu.Lock()
	ok := d.icmpLim.Allow(in.src, time.Now())
	icmpMu.Unlock()
	if !ok || in.src.IsUnspecified() || in.src.IsMulticast() {
		return
	}
	if !in.v6 {
		if err := d.snd.sendOne(fragNeeded4(orig, mtu)); err == nil {
			d.stats.FragNeeded.Add(1)
		}
		return
	}
	d.icmp6Mu.Lock()
	defer d.icmp6Mu.Unlock()
	if d.icmp6 == nil {
		s, err := newICMP6Sender()
		if err != nil {
			return
		}
		d.icmp6 = s
	}
	body, dst := packetTooBig6(orig, max(mtu, 1280))
	if err := d.icmp6.send(body, dst); err == nil {
		d.stats.FragNeeded.Add(1)
	}
}

// replicate sends a multicast or broadcast packet to every NBMA of the
// multicast list.
func (d *Device) replicate(pkt []byte, in inner) {
	for _, nbma := range d.mcast.Load() {
		buf := make([]byte, txHeadroom+len(pkt))
		copy(buf[txHeadroom:], pkt)
		nb := &neighbor{n: gre.Neighbor{NBMA: nbma}, nbma4: nbma.As4(), peer: d.stats.Peer(nbma)}
		d.sendSingle(buf, len(pkt), in, nb)
	}
}

// txLoop moves packets from the TUN to the underlay: batched reads (TSO
// bursts arrive as one read and are split into MTU-sized segments by the
// tun package), next hop, neighbour, encapsulation in the headroom, one
// sendmmsg per batch.
func (d *Device) txLoop() {
	defer d.wg.Done()
	batch := d.tun.BatchSize()
	bufs := make([][]byte, batch)
	sizes := make([]int, batch)
	nbs := make([]*neighbor, batch)
	lens := make([]int, batch)
	for i := range bufs {
		bufs[i] = make([]byte, bufSize+txHeadroom)
	}
	rc := newRouteCache(kernelLookup(d.nlh, d.tunIndex), &d.routeGen)
	var flow lastFlow
	for {
		cnt, err := d.tun.Read(bufs, sizes, txHeadroom)
		if err != nil {
			if d.isClosed() || errors.Is(err, os.ErrClosed) {
				return
			}
			if errors.Is(err, tun.ErrTooManySegments) {
				d.stats.Drop(gre.DropMalformed, 1)
				continue
			}
			d.stats.Drop(gre.DropTunError, 1)
			if d.sleep(10 * time.Millisecond) {
				return
			}
			continue
		}
		now := time.Now()
		k := 0
		for i := 0; i < cnt; i++ {
			n := sizes[i]
			pkt := bufs[i][txHeadroom : txHeadroom+n]
			in, ok := parseInner(pkt)
			if !ok {
				d.stats.Drop(gre.DropMalformed, 1)
				continue
			}
			if isMultiDest(in.dst, d.cfg.Prefix) {
				d.replicate(pkt, in)
				continue
			}
			nb := flow.get(in, d)
			if nb == nil {
				var src netip.Addr
				if d.isLocal(in.src) {
					src = in.src
				}
				nh, ok := rc.nextHop(in.dst, src)
				if !ok {
					d.stats.Drop(gre.DropNoRoute, 1)
					continue
				}
				if nb = d.lookupNeigh(nh); nb == nil {
					d.miss(nh, in.dst, pkt, now)
					continue
				}
				flow.set(in, nb, d)
			}
			out, ok := d.prepare(bufs[i], n, in, nb, now)
			if !ok {
				continue
			}
			nb.lastUsed.Store(now.UnixNano())
			d.snd.set(k, out)
			nbs[k], lens[k] = nb, n
			k++
		}
		var pkts, bytes uint64
		for sent := 0; sent < k; {
			r, err := d.snd.send(sent, k)
			if err != nil {
				d.sendFailed(err)
				sent++ // skip the datagram the kernel refused
				continue
			}
			for j := sent; j < sent+r; j++ {
				pkts++
				bytes += uint64(lens[j])
				if p := nbs[j].peer; p != nil {
					p.TxPackets.Add(1)
					p.TxBytes.Add(uint64(lens[j]))
				}
			}
			sent += r
		}
		if pkts > 0 {
			d.stats.TxPackets.Add(pkts)
			d.stats.TxBytes.Add(bytes)
		}
	}
}

// rxLoop moves GRE from the underlay to the TUN (data) or to ReadNHRP.
func (d *Device) rxLoop() {
	defer d.wg.Done()
	lens := make([]int, rxBatch)
	ifidx := make([]int, rxBatch)
	out := make([][]byte, 0, rxBatch)
	for {
		cnt, err := d.rcv.recv(lens, ifidx)
		if d.isClosed() {
			return
		}
		if err != nil {
			if !errors.Is(err, unix.EAGAIN) {
				// an ICMP error about our packets (sk_err): read the queue
				d.learnPMTU(d.rcv.fd)
			}
			continue
		}
		for i := 0; i < cnt; i++ {
			if p := d.receive(d.rbuf[i], lens[i], ifidx[i], &out); p != nil {
				out = append(out, p)
			}
		}
		d.rxCount.flush(d)
		d.flushTun(&out)
	}
}

// receive checks one datagram; it returns the slice to write to the TUN
// (rxTunOffset bytes of headroom, then the inner packet) or nil when the
// datagram was consumed or dropped.
func (d *Device) receive(b []byte, n, ifindex int, out *[][]byte) []byte {
	if n < 0 {
		d.stats.Drop(gre.DropTruncated, 1)
		return nil
	}
	b = b[:n]
	if len(b) < ipv4HdrLen || b[0]>>4 != 4 || b[9] != 47 {
		d.stats.Drop(gre.DropMalformed, 1)
		return nil
	}
	ihl := int(b[0]&0x0f) * 4
	if ihl < ipv4HdrLen || len(b) < ihl+4 {
		d.stats.Drop(gre.DropMalformed, 1)
		return nil
	}
	if tl := int(binary.BigEndian.Uint16(b[2:4])); tl >= ihl+4 && tl < len(b) {
		b = b[:tl] // trailing padding; GRO super-packets carry their own length
	}
	if d.cfg.AcceptIngress != nil && !d.cfg.AcceptIngress(ifindex) {
		d.stats.Drop(gre.DropIngress, 1)
		return nil
	}
	h, hl, err := gre.ParseHeader(b[ihl:])
	if err != nil {
		d.stats.Drop(gre.DropReasonOf(err), 1)
		return nil
	}
	if !h.HasKey || h.Key != d.cfg.Key {
		d.stats.Drop(gre.DropBadKey, 1)
		return nil
	}
	from := d.peerAddr(netip.AddrFrom4([4]byte(b[12:16])))
	start := ihl + hl
	payload := b[start:]
	switch h.Protocol {
	case gre.ProtoNHRP:
		select {
		case d.nhrp <- nhrpPacket{from: from, b: append([]byte(nil), payload...)}:
			d.stats.NHRPRx.Add(1)
		default:
			d.stats.Drop(gre.DropQueueFull, 1)
		}
		return nil
	case gre.ProtoIPv4, gre.ProtoIPv6:
	default:
		d.stats.Drop(gre.DropUnsupported, 1)
		return nil
	}
	il, ok := innerLen(payload)
	if !ok || (payload[0]>>4 == 4) != (h.Protocol == gre.ProtoIPv4) {
		d.stats.Drop(gre.DropMalformed, 1)
		return nil
	}
	payload = payload[:il]
	d.rxCount.add(d, from, il)
	if il > int(d.mtu.Load()) {
		d.flushTun(out)
		d.writeSuper(b[start-vnetHdrLen : start+il])
		return nil
	}
	return b[start-rxTunOffset : start+il]
}

// writeSuper writes a coalesced (GRO) datagram from the underlay to the
// TUN as one GSO packet; b holds vnetHdrLen bytes of room, then the packet.
func (d *Device) writeSuper(b []byte) {
	h, ok := gsoHeader(b[vnetHdrLen:], int(d.mtu.Load()))
	if !ok {
		d.stats.Drop(gre.DropTooBig, 1)
		return
	}
	copy(b, h[:])
	if _, err := d.tunFile.Write(b); err != nil {
		d.stats.Drop(gre.DropTunError, 1)
		return
	}
	d.stats.RxSuper.Add(1)
}

// flushTun writes the collected packets to the TUN in one batch (the tun
// package coalesces TCP segments, GRO, before writing).
func (d *Device) flushTun(out *[][]byte) {
	if len(*out) == 0 {
		return
	}
	if _, err := d.tun.Write(*out, rxTunOffset); err != nil && !d.isClosed() {
		d.stats.Drop(gre.DropTunError, 1)
	}
	*out = (*out)[:0]
}

// lastFlow remembers the neighbour of the last packet's addresses: a TSO
// burst is dozens of segments of one flow, and this skips the route cache
// and neighbour map for all but the first. Valid while neither the routing
// generation nor the neighbour table changed.
type lastFlow struct {
	dst, src netip.Addr
	gen      uint64
	neighGen uint64
	nb       *neighbor
}

func (f *lastFlow) get(in inner, d *Device) *neighbor {
	if f.nb == nil || in.dst != f.dst || in.src != f.src || d.routeGen.Load() != f.gen || d.neigh.generation() != f.neighGen {
		return nil
	}
	return f.nb
}

func (f *lastFlow) set(in inner, nb *neighbor, d *Device) {
	f.dst, f.src, f.nb = in.dst, in.src, nb
	f.gen, f.neighGen = d.routeGen.Load(), d.neigh.generation()
}

// rxCounter accumulates the receive counters of one batch (owned by the
// receive goroutine) so the shared atomics are touched once per batch.
type rxCounter struct {
	pkts, bytes uint64
	peerAddr    netip.Addr
	peer        *gre.PeerStats
	pp, pb      uint64
}

func (c *rxCounter) add(d *Device, from netip.Addr, n int) {
	c.pkts++
	c.bytes += uint64(n)
	if from != c.peerAddr || c.peer == nil {
		c.flushPeer()
		c.peerAddr, c.peer = from, d.stats.Peer(from)
	}
	c.pp++
	c.pb += uint64(n)
}

func (c *rxCounter) flushPeer() {
	if c.peer != nil && c.pp > 0 {
		c.peer.RxPackets.Add(c.pp)
		c.peer.RxBytes.Add(c.pb)
	}
	c.pp, c.pb = 0, 0
}

func (c *rxCounter) flush(d *Device) {
	c.flushPeer()
	if c.pkts > 0 {
		d.stats.RxPackets.Add(c.pkts)
		d.stats.RxBytes.Add(c.bytes)
		c.pkts, c.bytes = 0, 0
	}
}
