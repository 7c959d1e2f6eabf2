package kernel

import (
	"errors"
	"net/netip"
	"sync"

	"github.com/opendmvpn/dmvpn/gre"
)

const (
	// rxQueueLen bounds the NHRP packets read and not yet taken by the
	// engine: a hub takes registration storms of thousands; beyond it,
	// packets are dropped and counted (queue_full).
	rxQueueLen = 8192
	// txQueueLen bounds the packets written and not yet sent.
	txQueueLen = 4096
	// ioBatch is how many packets one recvmmsg or sendmmsg moves.
	ioBatch = 64
	// rxBufSize is the largest NHRP packet taken (GRE carries up to 64 KiB;
	// no NHRP packet of a sane peer comes near): longer ones are dropped
	// as truncated.
	rxBufSize = 16 << 10
)

// rxPacket is an NHRP packet read from the socket.
type rxPacket struct {
	b    []byte
	from netip.Addr
}

// pktBufSize is the size of the pooled buffers that hold a packet queued
// between the socket and the engine, either way: NHRP packets are a few
// hundred bytes, and each queued one held a buffer of rxBufSize (16 KiB)
// before — a hub answering a burst of registrations kept megabytes of
// them (RSS the spokes were charged for in bench-nhrp-frr). A longer
// packet gets a buffer of its own size.
const pktBufSize = 2048

var pktPool = sync.Pool{New: func() any { b := make([]byte, pktBufSize); return &b }}

// pktBuf returns a copy of b in a pooled buffer when it fits one.
func pktBuf(b []byte) []byte {
	if len(b) > pktBufSize {
		return append([]byte(nil), b...)
	}
	p := (*pktPool.Get().(*[]byte))[:len(b)]
	copy(p, b)
	return p
}

// putPkt gives a buffer of pktBuf back to the pool.
func putPkt(b []byte) {
	if cap(b) == pktBufSize {
		b = b[:cap(b)]
		pktPool.Put(&b)
	}
}

// rxLoop reads NHRP packets in batches and queues them for ReadNHRP. A
// full queue drops (counted), never blocks the socket.
func (d *Device) rxLoop() {
	defer d.wg.Done()
	ms := make([]nhrpMsg, ioBatch)
	for i := range ms {
		ms[i].B = make([]byte, rxBufSize)
	}
	for {
		n, err := d.nhrp.ReadBatch(ms)
		if err != nil {
			if errors.Is(err, errConnClosed) || d.closed.Load() {
				return
			}
			d.stats.Drop(gre.DropTunError, 1)
			select {
			case <-d.done:
				return
			default:
			}
			continue
		}
		for i := 0; i < n; i++ {
			m := &ms[i]
			switch {
			case m.Trunc:
				d.stats.Drop(gre.DropTruncated, 1)
				continue
			case !m.Peer.IsValid() || m.N == 0:
				d.stats.Drop(gre.DropMalformed, 1)
				continue
			}
			b := pktBuf(m.B[:m.N])
			select {
			case d.rxq <- rxPacket{b: b, from: m.Peer}:
				d.stats.NHRPRx.Add(1)
			default:
				putPkt(b)
				d.stats.Drop(gre.DropQueueFull, 1)
			}
		}
	}
}

// txLoop sends the queued packets, as many at once as are queued (up to
// ioBatch). On Close it sends what is queued, then stops.
func (d *Device) txLoop() {
	defer d.txWG.Done()
	ms := make([]nhrpMsg, 0, ioBatch)
	for {
		ms = ms[:0]
		select {
		case m := <-d.txq:
			ms = append(ms, m)
		case <-d.done:
			d.drainTx()
			return
		}
	more:
		for len(ms) < ioBatch {
			select {
			case m := <-d.txq:
				ms = append(ms, m)
			default:
				break more
			}
		}
		d.sendBatch(ms)
	}
}

// sendBatch sends ms, skipping (and counting) a packet the kernel
// refuses.
func (d *Device) sendBatch(ms []nhrpMsg) {
	for len(ms) > 0 {
		n, err := d.nhrp.WriteBatch(ms)
		for _, m := range ms[:n] {
			putPkt(m.B)
		}
		d.stats.NHRPTx.Add(uint64(n))
		ms = ms[n:]
		if err == nil || len(ms) == 0 {
			return
		}
		d.stats.Drop(gre.DropSendError, 1)
		putPkt(ms[0].B)
		ms = ms[1:]
		if errors.Is(err, errConnClosed) {
			for _, m := range ms {
				putPkt(m.B)
			}
			d.stats.Drop(gre.DropSendError, uint64(len(ms)))
			return
		}
	}
}

// drainTx sends what is still queued when the device closes.
func (d *Device) drainTx() {
	ms := make([]nhrpMsg, 0, ioBatch)
	for {
		select {
		case m := <-d.txq:
			ms = append(ms, m)
			if len(ms) == ioBatch {
				d.sendBatch(ms)
				ms = ms[:0]
			}
		default:
			d.sendBatch(ms)
			return
		}
	}
}
