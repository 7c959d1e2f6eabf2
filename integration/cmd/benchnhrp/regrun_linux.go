package main

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// The registration runner: the spoke simulator's fast path. It keeps at
// most Window registrations outstanding, sends them in batches
// (sendmmsg on a raw socket that writes its own IPv4 headers, so each
// spoke has its own NBMA source address), reads the replies in batches
// (recvmmsg on a raw GRE socket) and retransmits a request unanswered
// after Retry, as spokes do, until every spoke is registered or Deadline.
// It is independent of the hub under test: the same runner drives FRR's
// nhrpd and ours.

// regOpts configures one registration run.
type regOpts struct {
	// N spokes, numbered from First (spokeNBMA, spokeProto).
	N, First int
	// Window is how many registrations may be outstanding; 0 is all.
	Window int
	// Retry is when an unanswered request is sent again (1 s).
	Retry time.Duration
	// Deadline bounds the run.
	Deadline time.Duration
	// IDBase is added to the spoke number to make the request ID, so
	// that a late reply to an earlier run is not taken for this one's.
	IDBase uint32
	// Holding is the holding time asked for, in seconds (7200).
	Holding uint16
	// Pace, when set, spreads the first sends evenly over it (a refresh
	// cycle) instead of sending as fast as the window allows.
	Pace time.Duration
}

// regStats is what a registration run measured.
type regStats struct {
	N        int             `json:"n"`
	Answered int             `json:"answered"`
	Refused  int             `json:"refused"` // replies with a non-zero CIE code
	Sends    int             `json:"sends"`
	Elapsed  time.Duration   `json:"elapsed"` // first send → last reply
	Lat      []time.Duration `json:"-"`       // per answered spoke: its last send → reply
	P50      time.Duration   `json:"p50"`
	P99      time.Duration   `json:"p99"`
	Missing  []int           `json:"-"` // spokes never answered
	// First and Tenths: when the first reply came and when a tenth,
	// half and nine tenths of the spokes were answered (from the first
	// send): a start-up cost shows as a late first reply or a slow first
	// tenth.
	First  time.Duration    `json:"first"`
	Tenths [3]time.Duration `json:"tenths"`
}

// rate is registrations answered per second.
func (s regStats) rate() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Answered) / s.Elapsed.Seconds()
}

// batchSender sends prebuilt IPv4 datagrams with sendmmsg.
type batchSender struct {
	fd    int
	hdrs  []mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet4
	bufs  [][]byte
	n     int
}

type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
	_   [4]byte
}

const batchMax = 64

func newBatchSender(fd int) *batchSender {
	s := &batchSender{fd: fd, hdrs: make([]mmsghdr, batchMax), iovs: make([]unix.Iovec, batchMax),
		names: make([]unix.RawSockaddrInet4, batchMax), bufs: make([][]byte, batchMax)}
	for i := range s.hdrs {
		s.names[i].Family = unix.AF_INET
		s.hdrs[i].hdr.Name = (*byte)(unsafe.Pointer(&s.names[i]))
		s.hdrs[i].hdr.Namelen = unix.SizeofSockaddrInet4
		s.hdrs[i].hdr.Iov = &s.iovs[i]
		s.hdrs[i].hdr.Iovlen = 1
		s.bufs[i] = make([]byte, 0, 2048)
	}
	return s
}

// next returns the buffer of the next message, empty; full reports that
// the batch must be flushed first.
func (s *batchSender) next() []byte { return s.bufs[s.n][:0] }
func (s *batchSender) full() bool   { return s.n == batchMax }

// add queues the datagram b (built in next's buffer).
func (s *batchSender) add(b []byte) {
	s.bufs[s.n] = b
	s.iovs[s.n].Base = &b[0]
	s.iovs[s.n].SetLen(len(b))
	s.names[s.n].Addr = [4]byte(b[16:20])
	s.n++
}

// flush sends the queued datagrams, waiting out a full socket buffer.
func (s *batchSender) flush() error {
	from := 0
	for from < s.n {
		r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(s.fd), uintptr(unsafe.Pointer(&s.hdrs[from])), uintptr(s.n-from), 0, 0, 0)
		switch e {
		case 0:
			from += int(r)
		case unix.EINTR:
		case unix.ENOBUFS, unix.EAGAIN:
			time.Sleep(50 * time.Microsecond)
		default:
			s.n = 0
			return fmt.Errorf("sendmmsg: %w", e)
		}
	}
	s.n = 0
	return nil
}

// appendNHRP appends an IPv4+GRE(key) datagram carrying p from src to dst.
func (g *loadgen) appendNHRP(b []byte, src, dst netip.Addr, p *wire.Packet) ([]byte, error) {
	b = append(b, 0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 47, 0, 0)
	s4, d4 := src.As4(), dst.As4()
	b = append(b, s4[:]...)
	b = append(b, d4[:]...)
	h := gre.Header{Protocol: gre.ProtoNHRP, HasKey: true, Key: g.key}
	at := len(b)
	b = append(b, make([]byte, h.Len())...)
	h.Marshal(b[at:])
	b, err := p.AppendBinary(b)
	if err != nil {
		return nil, err
	}
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	return b, nil
}

// batchReceiver reads GRE datagrams with recvmmsg.
type batchReceiver struct {
	fd   int
	hdrs []mmsghdr
	iovs []unix.Iovec
	bufs [][]byte
}

func newBatchReceiver(fd int) *batchReceiver {
	r := &batchReceiver{fd: fd, hdrs: make([]mmsghdr, batchMax), iovs: make([]unix.Iovec, batchMax), bufs: make([][]byte, batchMax)}
	for i := range r.hdrs {
		r.bufs[i] = make([]byte, 4096)
		r.iovs[i].Base = &r.bufs[i][0]
		r.iovs[i].SetLen(len(r.bufs[i]))
		r.hdrs[i].hdr.Iov = &r.iovs[i]
		r.hdrs[i].hdr.Iovlen = 1
	}
	return r
}

// recv reads a batch; it returns 0 on the socket's receive timeout.
func (r *batchReceiver) recv() (int, error) {
	for {
		n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(r.fd), uintptr(unsafe.Pointer(&r.hdrs[0])), uintptr(len(r.hdrs)), unix.MSG_WAITFORONE, 0, 0)
		switch e {
		case 0:
			return int(n), nil
		case unix.EINTR:
		case unix.EAGAIN:
			return 0, nil
		default:
			return 0, fmt.Errorf("recvmmsg: %w", e)
		}
	}
}

// packet returns datagram i of the last batch: its outer destination
// and the NHRP payload (nil if it is not NHRP in GRE).
func (r *batchReceiver) packet(i int) (netip.Addr, []byte) {
	b := r.bufs[i][:r.hdrs[i].n]
	if len(b) < 20 {
		return netip.Addr{}, nil
	}
	ihl := int(b[0]&0x0f) * 4
	to := netip.AddrFrom4([4]byte(b[16:20]))
	if len(b) < ihl {
		return to, nil
	}
	h, off, err := gre.ParseHeader(b[ihl:])
	if err != nil || h.Protocol != gre.ProtoNHRP {
		return to, nil
	}
	return to, b[ihl+off:]
}

// register runs one registration run.
func (g *loadgen) register(o regOpts) (regStats, error) {
	if o.Window <= 0 || o.Window > o.N {
		o.Window = o.N
	}
	if o.Retry == 0 {
		o.Retry = time.Second
	}
	if o.Holding == 0 {
		o.Holding = 7200
	}
	n := o.N
	st := regStats{N: n}
	replyAt := make([]atomic.Int64, n) // ns since start; 0: none yet
	var refused atomic.Int64
	acks := make(chan int, 1<<16)
	start := time.Now()
	stop := make(chan struct{})
	recvErr := make(chan error, 1)
	go func() {
		r := newBatchReceiver(g.recvFD)
		var p wire.Packet
		for {
			select {
			case <-stop:
				recvErr <- nil
				return
			default:
			}
			k, err := r.recv()
			if err != nil {
				recvErr <- err
				return
			}
			now := time.Since(start).Nanoseconds()
			for j := 0; j < k; j++ {
				to, b := r.packet(j)
				if len(b) < wire.FixedHeaderLen || wire.Type(b[17]) != wire.TypeRegistrationReply { // ar$op.type
					continue
				}
				if err := p.UnmarshalBinary(b); err != nil || len(p.CIEs) == 0 {
					continue
				}
				i := int(p.RequestID - o.IDBase)
				if i < 0 || i >= n || to != spokeNBMA(o.First+i) {
					continue
				}
				if !replyAt[i].CompareAndSwap(0, max(now, 1)) {
					continue
				}
				if p.CIEs[0].Code != 0 {
					refused.Add(1)
				}
				acks <- i
			}
		}
	}()
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
	}()

	s := newBatchSender(g.sendFD)
	sentAt := make([]int64, n) // last send, ns since start
	prevAt := make([]int64, n) // the send before it
	type sent struct {
		i  int
		at int64
	}
	var fifo []sent // sends in time order, for retransmission
	next, outstanding, answered := 0, 0, 0
	var pkt wire.Packet
	send := func(i int, now int64) error {
		if s.full() {
			if err := s.flush(); err != nil {
				return err
			}
		}
		g.registrationInto(&pkt, o.First+i, o.IDBase+uint32(i), o.Holding)
		b, err := g.appendNHRP(s.next(), spokeNBMA(o.First+i), g.hub, &pkt)
		if err != nil {
			return err
		}
		s.add(b)
		prevAt[i], sentAt[i] = sentAt[i], now
		fifo = append(fifo, sent{i, now})
		st.Sends++
		return nil
	}
	deadline := start.Add(o.Deadline)
	retry := o.Retry.Nanoseconds()
	for answered < n && time.Now().Before(deadline) {
	drain:
		for {
			select {
			case <-acks:
				outstanding--
				answered++
			default:
				break drain
			}
		}
		now := time.Since(start).Nanoseconds()
		limit := n
		if o.Pace > 0 {
			limit = min(n, int(int64(n)*now/o.Pace.Nanoseconds())+1)
		}
		for next < limit && outstanding < o.Window {
			if err := send(next, now); err != nil {
				return st, err
			}
			next++
			outstanding++
		}
		for len(fifo) > 0 && fifo[0].at+retry <= now {
			f := fifo[0]
			fifo = fifo[1:]
			if replyAt[f.i].Load() != 0 || sentAt[f.i] != f.at {
				continue
			}
			if err := send(f.i, now); err != nil {
				return st, err
			}
		}
		if len(fifo) > 4096 && cap(fifo) > 4*len(fifo) {
			fifo = slices.Clone(fifo)
		}
		if err := s.flush(); err != nil {
			return st, err
		}
		// Wait for a reply, the next retransmission or the next paced send.
		wait := 5 * time.Millisecond
		if o.Pace > 0 && next < n {
			wait = min(wait, time.Millisecond)
		}
		select {
		case <-acks:
			outstanding--
			answered++
		case <-time.After(wait):
		}
	}
	close(stop)
	if err := <-recvErr; err != nil {
		return st, err
	}
	var last int64
	for i := range n {
		at := replyAt[i].Load()
		if at == 0 {
			st.Missing = append(st.Missing, o.First+i)
			continue
		}
		st.Answered++
		last = max(last, at)
		from := sentAt[i]
		if from > at {
			from = prevAt[i]
		}
		st.Lat = append(st.Lat, time.Duration(at-from))
	}
	st.Refused = int(refused.Load())
	st.Elapsed = time.Duration(last)
	var ats []time.Duration
	for i := range n {
		if at := replyAt[i].Load(); at != 0 {
			ats = append(ats, time.Duration(at))
		}
	}
	if len(ats) > 0 {
		slices.Sort(ats)
		st.First = ats[0]
		for k, f := range []int{10, 50, 90} {
			st.Tenths[k] = ats[min(len(ats)-1, n*f/100)]
		}
	}
	st.P50, st.P99 = pct(st.Lat, 50), pct(st.Lat, 99)
	return st, nil
}

// registrationInto fills p with spoke i's Registration Request (the
// packet registration builds), reusing p's slices.
func (g *loadgen) registrationInto(p *wire.Packet, i int, id uint32, holding uint16) {
	*p = *g.registration(i, id)
	p.CIEs[0].HoldingTime = holding
}
