package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// loadgen simulates many spokes from distinct NBMA addresses: it sends
// their NHRP packets on a raw socket with its own IPv4 header (any source
// in the namespace's local range) and reads the answers on a raw GRE
// socket.
type loadgen struct {
	hub      netip.Addr // hub NBMA
	hubProto netip.Addr
	key      uint32
	sendFD   int
	recvFD   int
	mu       sync.Mutex
	buf      []byte
}

// spokeNBMA and spokeProto number the simulated spokes: NBMA addresses in
// 198.18.0.0/15 (the benchmarking range), tunnel addresses in 10.0.0.0/8
// from 10.0.0.2 (10.1.0.0 and up past 65,534 spokes).
func spokeNBMA(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 18 + byte((i+1)>>16), byte((i + 1) >> 8), byte(i + 1)})
}

func spokeProto(i int) netip.Addr {
	n := i + 2
	return netip.AddrFrom4([4]byte{10, byte(n >> 16), byte(n >> 8), byte(n)})
}

func newLoadgen(hub, hubProto netip.Addr, key uint32) (*loadgen, error) {
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
	if err != nil {
		return nil, fmt.Errorf("raw send socket: %w", err)
	}
	_ = unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 8<<20)
	r, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_GRE)
	if err != nil {
		unix.Close(s)
		return nil, fmt.Errorf("raw GRE socket: %w", err)
	}
	_ = unix.SetsockoptInt(r, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20)
	tv := unix.NsecToTimeval(int64(50 * time.Millisecond))
	_ = unix.SetsockoptTimeval(r, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	return &loadgen{hub: hub, hubProto: hubProto, key: key, sendFD: s, recvFD: r}, nil
}

func (g *loadgen) close() {
	unix.Close(g.sendFD)
	unix.Close(g.recvFD)
}

// send sends an NHRP packet from src to dst in GRE with the key.
func (g *loadgen) send(src, dst netip.Addr, p *wire.Packet) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	b := g.buf[:0]
	b = append(b, 0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 47, 0, 0)
	s4, d4 := src.As4(), dst.As4()
	b = append(b, s4[:]...)
	b = append(b, d4[:]...)
	h := gre.Header{Protocol: gre.ProtoNHRP, HasKey: true, Key: g.key}
	greAt := len(b)
	b = append(b, make([]byte, h.Len())...)
	h.Marshal(b[greAt:])
	var err error
	if b, err = p.AppendBinary(b); err != nil {
		return err
	}
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	g.buf = b
	sa := &unix.SockaddrInet4{Addr: d4}
	for {
		err = unix.Sendto(g.sendFD, b, 0, sa)
		if !errors.Is(err, unix.ENOBUFS) && !errors.Is(err, unix.EAGAIN) {
			return err
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// received is an NHRP packet read from the GRE socket.
type received struct {
	to  netip.Addr // outer destination: which simulated spoke
	pkt *wire.Packet
	at  time.Time
}

// recv reads one NHRP packet; ok is false on timeout.
func (g *loadgen) recv(buf []byte) (received, bool, error) {
	for {
		n, _, err := unix.Recvfrom(g.recvFD, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			return received{}, false, nil
		}
		if err != nil {
			return received{}, false, err
		}
		at := time.Now()
		if n < 20 {
			continue
		}
		ihl := int(buf[0]&0x0f) * 4
		to := netip.AddrFrom4([4]byte(buf[16:20]))
		h, off, err := gre.ParseHeader(buf[ihl:n])
		if err != nil || h.Protocol != gre.ProtoNHRP {
			continue
		}
		p, err := wire.Decode(buf[ihl+off : n])
		if err != nil {
			continue
		}
		return received{to: to, pkt: p, at: at}, true, nil
	}
}

// registration builds spoke i's Registration Request, as our spokes send
// it (unique, NAT flag, Cisco's extensions).
func (g *loadgen) registration(i int, id uint32) *wire.Packet {
	return &wire.Packet{
		Type: wire.TypeRegistrationRequest, HopCount: 255, Flags: wire.RegFlagU | wire.RegFlagNAT, RequestID: id,
		SrcNBMA: spokeNBMA(i), SrcProto: spokeProto(i), DstProto: g.hubProto,
		CIEs: []wire.CIE{{PrefixLen: 255, MTU: 1472, HoldingTime: 7200}},
		Extensions: []wire.Extension{
			{Type: wire.ExtResponderAddress, Compulsory: true},
			{Type: wire.ExtForwardTransit, Compulsory: true},
			{Type: wire.ExtReverseTransit, Compulsory: true},
			{Type: wire.ExtNATAddress, CIEs: []wire.CIE{{PrefixLen: 32, NBMA: g.hub, Proto: g.hubProto}}},
		},
	}
}

// registerAll registers n spokes as fast as the hub answers: everything
// is sent at once, unanswered requests are sent again after a second (as
// our spokes retransmit), until all are registered or timeout.
// It returns the time until the last reply.
func (g *loadgen) registerAll(n int, timeout time.Duration) (time.Duration, int, error) {
	done := make([]bool, n)
	remaining := n
	var mu sync.Mutex
	var last time.Time
	start := time.Now()
	stop := make(chan struct{})
	recvErr := make(chan error, 1)
	go func() {
		buf := make([]byte, 65536)
		for {
			select {
			case <-stop:
				recvErr <- nil
				return
			default:
			}
			r, ok, err := g.recv(buf)
			if err != nil {
				recvErr <- err
				return
			}
			if !ok || r.pkt.Type != wire.TypeRegistrationReply || len(r.pkt.CIEs) == 0 || r.pkt.CIEs[0].Code != 0 {
				continue
			}
			i := int(r.pkt.RequestID) - 1
			mu.Lock()
			if i >= 0 && i < n && !done[i] {
				done[i] = true
				remaining--
				last = r.at
			}
			mu.Unlock()
		}
	}()
	sends := 0
	for round := 0; time.Since(start) < timeout; round++ {
		mu.Lock()
		left := remaining
		mu.Unlock()
		if left == 0 {
			break
		}
		for i := 0; i < n; i++ {
			mu.Lock()
			d := done[i]
			mu.Unlock()
			if d {
				continue
			}
			if err := g.send(spokeNBMA(i), g.hub, g.registration(i, uint32(i+1))); err != nil {
				close(stop)
				return 0, sends, err
			}
			sends++
		}
		deadline := time.Now().Add(time.Second)
		for time.Now().Before(deadline) {
			mu.Lock()
			left = remaining
			mu.Unlock()
			if left == 0 {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	close(stop)
	if err := <-recvErr; err != nil {
		return 0, sends, err
	}
	mu.Lock()
	defer mu.Unlock()
	if remaining > 0 {
		return 0, sends, fmt.Errorf("%d of %d spokes not registered after %v", remaining, n, timeout)
	}
	return last.Sub(start), sends, nil
}

// resolutionRTTs measures Resolution Request round trips through the
// hub: simulated spoke A asks for spoke B's tunnel address; the hub
// forwards the request to B; the load generator answers as B, straight
// to A. The time is from A's request to A's reply.
func (g *loadgen) resolutionRTTs(n, samples int) ([]time.Duration, error) {
	buf := make([]byte, 65536)
	var rtts []time.Duration
	for k := 0; k < samples; k++ {
		a, b := k%n, (k*7919+1)%n
		if a == b {
			b = (b + 1) % n
		}
		id := uint32(1_000_000 + k)
		req := &wire.Packet{
			Type: wire.TypeResolutionRequest, HopCount: 255, RequestID: id,
			Flags:   wire.ResFlagQ | wire.ResFlagA | wire.ResFlagS | wire.ResFlagNAT,
			SrcNBMA: spokeNBMA(a), SrcProto: spokeProto(a), DstProto: spokeProto(b),
			CIEs: []wire.CIE{{MTU: 1472, HoldingTime: 7200}},
			Extensions: []wire.Extension{
				{Type: wire.ExtResponderAddress, Compulsory: true},
				{Type: wire.ExtForwardTransit, Compulsory: true},
				{Type: wire.ExtReverseTransit, Compulsory: true},
			},
		}
		start := time.Now()
		if err := g.send(spokeNBMA(a), g.hub, req); err != nil {
			return nil, err
		}
		deadline := start.Add(2 * time.Second)
		got := false
		for !got && time.Now().Before(deadline) {
			r, ok, err := g.recv(buf)
			if err != nil {
				return nil, err
			}
			if !ok {
				continue
			}
			switch {
			case r.pkt.Type == wire.TypeResolutionRequest && r.to == spokeNBMA(b) && r.pkt.RequestID == id:
				// Answer as B.
				rep := *r.pkt
				rep.Type = wire.TypeResolutionReply
				rep.HopCount = 255
				rep.Flags |= wire.ResFlagA | wire.ResFlagD | wire.ResFlagU
				rep.CIEs = []wire.CIE{{PrefixLen: 32, MTU: 1472, HoldingTime: 7200, NBMA: spokeNBMA(b), Proto: spokeProto(b)}}
				rep.Extensions = slices.Clone(r.pkt.Extensions)
				for i := range rep.Extensions {
					if rep.Extensions[i].Type == wire.ExtResponderAddress {
						rep.Extensions[i].CIEs = []wire.CIE{{MTU: 1472, HoldingTime: 7200, NBMA: spokeNBMA(b), Proto: spokeProto(b)}}
					}
				}
				if err := g.send(spokeNBMA(b), spokeNBMA(a), &rep); err != nil {
					return nil, err
				}
			case r.pkt.Type == wire.TypeResolutionReply && r.to == spokeNBMA(a) && r.pkt.RequestID == id:
				rtts = append(rtts, r.at.Sub(start))
				got = true
			}
		}
		if !got {
			return rtts, fmt.Errorf("no reply to resolution %d (%s asks for %s)", k, spokeProto(a), spokeProto(b))
		}
	}
	return rtts, nil
}
