//go:build linux

package failover

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// ICMPProbers opens probers on raw ICMP sockets: each bound to its
// uplink's interface (SO_BINDTODEVICE: requests leave through it only,
// replies are seen only when they arrive on it) and to the uplink's
// address (so the uplink's source rule sends the requests through its own
// table, which keeps its default route whatever the main table says).
// It needs CAP_NET_RAW.
type ICMPProbers struct{}

// Open implements ProberFactory.
func (ICMPProbers) Open(u Uplink, l Link, deliver func(Reply)) (Prober, error) {
	if !l.Addr.Addr().Is4() {
		return nil, fmt.Errorf("probing %s: no IPv4 address", u.Interface)
	}
	id := uint16(rand.Uint32())
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.IPPROTO_ICMP)
	if err != nil {
		return nil, fmt.Errorf("probing %s: raw ICMP socket: %w", u.Interface, err)
	}
	if err := setupProbeSocket(fd, u.Interface, l.Addr.Addr(), id); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("probing %s: %w", u.Interface, err)
	}
	f := os.NewFile(uintptr(fd), "icmp-"+u.Interface)
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("probing %s: %w", u.Interface, err)
	}
	p := &icmpProber{f: f, rc: rc, id: id, deliver: deliver, done: make(chan struct{})}
	go p.read()
	return p, nil
}

// setupProbeSocket binds a raw ICMP socket to an interface and address,
// and filters what it receives down to echo replies carrying id.
func setupProbeSocket(fd int, ifname string, src netip.Addr, id uint16) error {
	if err := unix.SetsockoptString(fd, unix.SOL_SOCKET, unix.SO_BINDTODEVICE, ifname); err != nil {
		return fmt.Errorf("SO_BINDTODEVICE %s: %w", ifname, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: src.As4()}); err != nil {
		return fmt.Errorf("bind %s: %w", src, err)
	}
	prog, err := bpf.Assemble([]bpf.Instruction{
		bpf.LoadMemShift{Off: 0},          // X = IP header length
		bpf.LoadIndirect{Off: 0, Size: 1}, // ICMP type
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: icmpEchoReply, SkipTrue: 3},
		bpf.LoadIndirect{Off: 4, Size: 2}, // identifier
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: uint32(id), SkipTrue: 1},
		bpf.RetConstant{Val: 0xffff},
		bpf.RetConstant{Val: 0},
	})
	if err != nil {
		return fmt.Errorf("the echo reply filter: %w", err)
	}
	filter := make([]unix.SockFilter, len(prog))
	for i, in := range prog {
		filter[i] = unix.SockFilter{Code: in.Op, Jt: in.Jt, Jf: in.Jf, K: in.K}
	}
	fp := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &fp); err != nil {
		return fmt.Errorf("SO_ATTACH_FILTER: %w", err)
	}
	return nil
}

// icmpProber is one uplink's raw ICMP socket.
type icmpProber struct {
	f       *os.File
	rc      syscall.RawConn
	id      uint16
	deliver func(Reply)
	done    chan struct{}

	mu  sync.Mutex
	buf []byte
}

// Send implements Prober.
func (p *icmpProber) Send(host netip.Addr, seq uint16) error {
	if !host.Is4() {
		return fmt.Errorf("probe host %s is not IPv4", host)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.buf = appendEchoRequest(p.buf[:0], p.id, seq)
	var serr error
	err := p.rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), p.buf, 0, &unix.SockaddrInet4{Addr: host.As4()})
		return !errors.Is(serr, unix.EAGAIN)
	})
	if err != nil {
		return err
	}
	return serr
}

// read delivers the echo replies until the socket is closed.
func (p *icmpProber) read() {
	defer close(p.done)
	b := make([]byte, 1500)
	for {
		var n int
		var rerr error
		err := p.rc.Read(func(fd uintptr) bool {
			n, _, rerr = unix.Recvfrom(int(fd), b, 0)
			return !errors.Is(rerr, unix.EAGAIN)
		})
		if err != nil {
			return // closed
		}
		if rerr != nil {
			continue
		}
		at := time.Now()
		from, id, seq, ok := parseEchoReply(b[:n])
		if ok && id == p.id {
			p.deliver(Reply{Host: from, Seq: seq, At: at})
		}
	}
}

// Close implements Prober.
func (p *icmpProber) Close() error {
	err := p.f.Close()
	<-p.done
	return err
}
