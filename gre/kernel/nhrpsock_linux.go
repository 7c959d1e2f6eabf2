package kernel

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/gre/internal/inet"
)

// The NHRP socket: an AF_PACKET datagram socket for GRE protocol 0x2001
// on the device (the kernel strips and adds the outer IPv4 and GRE
// headers; the link-layer address is the peer's NBMA address), read with
// recvmmsg and written with sendmmsg, through Go's netpoller (a reader
// waiting for packets holds no thread: a blocking read kept the runtime's
// monitor busy handing its processor off, a sixth of a hub's time under
// TCG). A hub answers registrations in bursts: one system call per batch
// instead of two per registration is what the kernel data plane gains
// here under load.

// nhrpMsg is one packet of a batch.
type nhrpMsg struct {
	// B is the buffer to read into, or the packet to send.
	B []byte
	// N is the length read; Trunc says the packet was longer than B.
	N     int
	Trunc bool
	// Peer is the sender (read; invalid when its link-layer address is
	// not 4 bytes) or the destination (write).
	Peer netip.Addr
}

// nhrpConn is the NHRP socket as the device uses it; tests replace it.
type nhrpConn interface {
	// ReadBatch blocks until packets arrive and fills up to len(ms) of
	// them. After Close it returns errConnClosed.
	ReadBatch(ms []nhrpMsg) (int, error)
	// WriteBatch sends the packets in order; it returns how many went
	// out before the first one that failed, and that one's error.
	WriteBatch(ms []nhrpMsg) (int, error)
	Close() error
}

var errConnClosed = errors.New("kernel: NHRP socket closed")

// afPacketNHRP is the real nhrpConn.
type afPacketNHRP struct {
	f       *os.File
	rc      syscall.RawConn
	ifindex int
	rmu     sync.Mutex // one read at a time (the header arrays)
	wmu     sync.Mutex // one write at a time

	rhdrs  []mmsghdr
	riovs  []unix.Iovec
	rnames []unix.RawSockaddrLinklayer
	whdrs  []mmsghdr
	wiovs  []unix.Iovec
	wnames []unix.RawSockaddrLinklayer
}

type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
	_   [4]byte
}

// listenNHRP opens the NHRP socket on the device.
func listenNHRP(ifindex int) (nhrpConn, error) {
	proto := htons(gre.ProtoNHRP)
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, int(proto))
	if err != nil {
		return nil, fmt.Errorf("packet socket: %w", err)
	}
	fail := func(what string, err error) (nhrpConn, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("packet socket %s: %w", what, err)
	}
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	}
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 4<<20) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifindex}); err != nil {
		return fail("bind", err)
	}
	f := os.NewFile(uintptr(fd), "nhrp")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("packet socket: %w", err)
	}
	return &afPacketNHRP{f: f, rc: rc, ifindex: ifindex}, nil
}

// prepare sizes the header arrays for n messages.
func prepare(hdrs *[]mmsghdr, iovs *[]unix.Iovec, names *[]unix.RawSockaddrLinklayer, n int) {
	if len(*hdrs) >= n {
		return
	}
	*hdrs, *iovs, *names = make([]mmsghdr, n), make([]unix.Iovec, n), make([]unix.RawSockaddrLinklayer, n)
	for i := range *hdrs {
		h := &(*hdrs)[i].hdr
		h.Name = (*byte)(unsafe.Pointer(&(*names)[i]))
		h.Iov = &(*iovs)[i]
		h.Iovlen = 1
	}
}

// ReadBatch implements nhrpConn.
func (c *afPacketNHRP) ReadBatch(ms []nhrpMsg) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	prepare(&c.rhdrs, &c.riovs, &c.rnames, len(ms))
	for i := range ms {
		c.riovs[i].Base = &ms[i].B[0]
		c.riovs[i].SetLen(len(ms[i].B))
		c.rhdrs[i].hdr.Namelen = unix.SizeofSockaddrLinklayer
		c.rhdrs[i].hdr.Flags = 0
	}
	var n uintptr
	var e syscall.Errno
	err := c.rc.Read(func(fd uintptr) bool {
		for {
			n, _, e = unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&c.rhdrs[0])), uintptr(len(ms)), unix.MSG_DONTWAIT, 0, 0)
			if e != unix.EINTR {
				return e != unix.EAGAIN
			}
		}
	})
	if err != nil {
		if errors.Is(err, os.ErrClosed) {
			return 0, errConnClosed
		}
		return 0, err
	}
	if e != 0 {
		return 0, fmt.Errorf("recvmmsg: %w", e)
	}
	for i := 0; i < int(n); i++ {
		h := &c.rhdrs[i]
		ms[i].N = min(int(h.n), len(ms[i].B))
		ms[i].Trunc = h.hdr.Flags&unix.MSG_TRUNC != 0
		ms[i].Peer = netip.Addr{}
		if sa := &c.rnames[i]; sa.Halen == 4 {
			ms[i].Peer = netip.AddrFrom4([4]byte{sa.Addr[0], sa.Addr[1], sa.Addr[2], sa.Addr[3]})
		}
	}
	return int(n), nil
}

// WriteBatch implements nhrpConn.
func (c *afPacketNHRP) WriteBatch(ms []nhrpMsg) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	prepare(&c.whdrs, &c.wiovs, &c.wnames, len(ms))
	for i := range ms {
		c.wiovs[i].Base = &ms[i].B[0]
		c.wiovs[i].SetLen(len(ms[i].B))
		sa := &c.wnames[i]
		*sa = unix.RawSockaddrLinklayer{Family: unix.AF_PACKET, Protocol: htons(gre.ProtoNHRP), Ifindex: int32(c.ifindex), Halen: 4}
		a := ms[i].Peer.As4()
		copy(sa.Addr[:], a[:])
		c.whdrs[i].hdr.Namelen = unix.SizeofSockaddrLinklayer
	}
	sent := 0
	var e syscall.Errno
	err := c.rc.Write(func(fd uintptr) bool {
		for sent < len(ms) {
			n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&c.whdrs[sent])), uintptr(len(ms)-sent), unix.MSG_DONTWAIT, 0, 0)
			switch errno {
			case 0:
				sent += int(n)
			case unix.EINTR:
			case unix.EAGAIN:
				return false // wait until the socket takes more
			default:
				e = errno
				return true
			}
		}
		return true
	})
	if err != nil {
		if errors.Is(err, os.ErrClosed) {
			return sent, errConnClosed
		}
		return sent, err
	}
	if e != 0 {
		return sent, e
	}
	return sent, nil
}

// Close closes the socket; a read or write waiting on it returns
// errConnClosed.
func (c *afPacketNHRP) Close() error { return c.f.Close() }

// Drops returns how many NHRP packets the kernel dropped because the
// socket's receive buffer was full.
func (c *afPacketNHRP) Drops() (uint64, bool) {
	var n uint64
	var err error
	if cerr := c.rc.Control(func(fd uintptr) { n, err = inet.SocketDrops(int(fd)) }); cerr != nil || err != nil {
		return 0, false
	}
	return n, true
}
