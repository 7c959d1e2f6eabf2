package userspace

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The raw sockets are plain blocking file descriptors driven with
// sendmmsg/recvmmsg from dedicated goroutines, never registered with Go's
// netpoller: with epoll on the send socket every transmitted skb pokes the
// poller on release (sock_wfree → sk_write_space), the top kernel cost in
// the measured relays (see shared/reference/ebpf-lab.md).

type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
	_   [4]byte
}

// rawSender sends complete IPv4 datagrams (IP_HDRINCL) in batches.
type rawSender struct {
	fd    int
	hdrs  []mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet4
	// oob is one IP_PROTOCOL control message shared by every send (nil
	// when the kernel does not take it).
	oob []byte
}

// protoCmsg is an IP_PROTOCOL control message naming GRE. With IP_HDRINCL
// the kernel looks up each packet's route as protocol IPPROTO_RAW (255)
// whatever the socket's protocol, so policy rules on `ipproto gre` (the
// IPsec rules that keep GRE from leaving in clear) would never match it;
// this message makes the lookup see GRE.
func protoCmsg() []byte {
	b := make([]byte, unix.CmsgSpace(4))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level = unix.IPPROTO_IP
	h.Type = unix.IP_PROTOCOL
	h.SetLen(unix.CmsgLen(4))
	binary.NativeEndian.PutUint32(b[unix.CmsgLen(0):], unix.IPPROTO_GRE)
	return b
}

// ProtoRouted reports whether this kernel routes IP_HDRINCL packets by the
// protocol an IP_PROTOCOL control message names (Linux 6.x): a MSG_PROBE
// send parses the message and looks up the route without sending anything.
func ProtoRouted() bool {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_GRE)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	if unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_HDRINCL, 1) != nil {
		return false
	}
	return probeProto(fd)
}

func probeProto(fd int) bool {
	pkt := make([]byte, 24)
	pkt[0] = 0x45
	pkt[8] = 64
	pkt[9] = unix.IPPROTO_GRE
	copy(pkt[16:20], []byte{127, 0, 0, 1})
	err := unix.Sendmsg(fd, pkt, protoCmsg(), &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}, msgProbe)
	return err != unix.EINVAL
}

func newRawSender(batch int) (*rawSender, error) {
	// A protocol-47 socket with IP_HDRINCL; each send carries an
	// IP_PROTOCOL message (see protoCmsg) so that routing sees GRE.
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_GRE)
	if err != nil {
		return nil, fmt.Errorf("raw send socket: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_HDRINCL, 1); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("raw send socket IP_HDRINCL: %w", err)
	}
	// It would also receive every GRE packet: a filter that takes none.
	drop := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0}}
	prog := unix.SockFprog{Len: uint16(len(drop)), Filter: &drop[0]}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &prog); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("raw send socket filter: %w", err)
	}
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 4<<20) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20)
	}
	// Local errors (EMSGSIZE with the device MTU) are queued for reading.
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_RECVERR, 1); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("raw send socket IP_RECVERR: %w", err)
	}
	s := &rawSender{fd: fd, hdrs: make([]mmsghdr, batch), iovs: make([]unix.Iovec, batch), names: make([]unix.RawSockaddrInet4, batch)}
	if probeProto(fd) {
		s.oob = protoCmsg()
	}
	for i := range s.hdrs {
		if s.oob != nil {
			s.hdrs[i].hdr.Control = &s.oob[0]
			s.hdrs[i].hdr.SetControllen(len(s.oob))
		}
		s.names[i].Family = unix.AF_INET
		s.hdrs[i].hdr.Name = (*byte)(unsafe.Pointer(&s.names[i]))
		s.hdrs[i].hdr.Namelen = unix.SizeofSockaddrInet4
		s.hdrs[i].hdr.Iov = &s.iovs[i]
		s.hdrs[i].hdr.Iovlen = 1
	}
	return s, nil
}

// set prepares message i of the next batch: an IPv4 datagram, sent to
// the destination in its header.
func (s *rawSender) set(i int, b []byte) {
	s.iovs[i].Base = &b[0]
	s.iovs[i].SetLen(len(b))
	s.names[i].Addr = [4]byte(b[16:20])
}

// An ICMP error about any GRE packet this node sent (protocol
// unreachable from a peer whose dmvpnd died, host unreachable,
// fragmentation needed) reaches every raw GRE socket of the namespace, the
// sender included, and is left there as the socket's pending error
// (sk_err: a hard error, or any error with IP_RECVERR), which the next
// send returns instead of sending — whatever that datagram's destination.
// The failed call consumes the error, so a datagram is tried once more
// before it counts as refused: otherwise a dead peer answering every
// packet sent to it with an ICMP error made the sends to live peers that
// followed fail (a spoke's registration and BGP keepalives to the
// surviving hub, sent just after those to the dead one).

// send transmits messages [from, k). It returns how many went out before
// an error; the message at from+sent is the one that failed (twice).
func (s *rawSender) send(from, k int) (int, error) {
	retried := false
	for {
		r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(s.fd), uintptr(unsafe.Pointer(&s.hdrs[from])), uintptr(k-from), 0, 0, 0)
		switch {
		case e == unix.EINTR:
			continue
		case e != 0 && !retried:
			retried = true
			continue
		case e != 0:
			return 0, e
		}
		return int(r), nil
	}
}

// sendOne sends one IPv4 datagram to the destination in its header; safe
// for concurrent use with the batch path. Like send, it tries once more
// after an error (a pending one about an earlier datagram).
func (s *rawSender) sendOne(b []byte) error {
	retried := false
	for {
		err := unix.Sendmsg(s.fd, b, s.oob, &unix.SockaddrInet4{Addr: [4]byte(b[16:20])}, 0)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil && !retried:
			retried = true
			continue
		}
		return err
	}
}

func (s *rawSender) close() error { return unix.Close(s.fd) }

// rawReceiver receives GRE datagrams (outer IPv4 header included) with the
// arrival interface from IP_PKTINFO.
type rawReceiver struct {
	fd   int
	hdrs []mmsghdr
	iovs []unix.Iovec
	oob  [][]byte
}

const oobLen = 64 // room for one IP_PKTINFO control message

func newRawReceiver(local netip.Addr, bufs [][]byte) (*rawReceiver, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_GRE)
	if err != nil {
		return nil, fmt.Errorf("raw GRE socket: %w", err)
	}
	fail := func(what string, err error) (*rawReceiver, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("raw GRE socket %s: %w", what, err)
	}
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_PKTINFO, 1); err != nil {
		return fail("IP_PKTINFO", err)
	}
	// ICMP errors about our GRE packets (fragmentation needed) are queued.
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_RECVERR, 1); err != nil {
		return fail("IP_RECVERR", err)
	}
	// A receive timeout bounds how long Close waits if shutdown does not
	// wake the blocked recvmmsg.
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 500000}); err != nil {
		return fail("SO_RCVTIMEO", err)
	}
	if local.IsValid() {
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: local.As4()}); err != nil {
			return fail("bind "+local.String(), err)
		}
	}
	r := &rawReceiver{fd: fd, hdrs: make([]mmsghdr, len(bufs)), iovs: make([]unix.Iovec, len(bufs)), oob: make([][]byte, len(bufs))}
	for i := range bufs {
		r.iovs[i].Base = &bufs[i][0]
		r.iovs[i].SetLen(len(bufs[i]))
		r.oob[i] = make([]byte, oobLen)
		r.hdrs[i].hdr.Iov = &r.iovs[i]
		r.hdrs[i].hdr.Iovlen = 1
		r.hdrs[i].hdr.Control = &r.oob[i][0]
	}
	return r, nil
}

// recv blocks until datagrams are queued and reads up to len(bufs) of
// them: lens[i] is the length (-1 if truncated), ifindex[i] the arrival
// interface (0 if unknown).
func (r *rawReceiver) recv(lens, ifindex []int) (int, error) {
	for i := range r.hdrs {
		r.hdrs[i].hdr.SetControllen(oobLen)
		r.hdrs[i].hdr.Flags = 0
	}
	for {
		n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(r.fd), uintptr(unsafe.Pointer(&r.hdrs[0])), uintptr(len(r.hdrs)), unix.MSG_WAITFORONE, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return 0, e
		}
		for i := 0; i < int(n); i++ {
			h := &r.hdrs[i]
			lens[i] = int(h.n)
			if h.hdr.Flags&unix.MSG_TRUNC != 0 {
				lens[i] = -1
			}
			ifindex[i] = pktinfoIfindex(r.oob[i][:h.hdr.Controllen])
		}
		return int(n), nil
	}
}

// shutdown wakes a blocked recv; it then returns empty datagrams.
func (r *rawReceiver) shutdown() { _ = unix.Shutdown(r.fd, unix.SHUT_RD) }

func (r *rawReceiver) close() error { return unix.Close(r.fd) }

// pktinfoIfindex finds the IP_PKTINFO interface index in control data.
func pktinfoIfindex(oob []byte) int {
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(oob) {
			return 0
		}
		if h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO && l >= unix.CmsgLen(unix.SizeofInet4Pktinfo) {
			return int(int32(binary.NativeEndian.Uint32(oob[unix.CmsgLen(0):])))
		}
		oob = oob[min(unix.CmsgSpace(l-unix.CmsgLen(0)), len(oob)):]
	}
	return 0
}

// pmtuReport is one "packet too big" learnt from a socket error queue.
type pmtuReport struct {
	dst netip.Addr
	mtu int
}

// readErrQueue drains a socket's error queue and returns the path-MTU
// reports in it (ICMP fragmentation needed, or local EMSGSIZE).
func readErrQueue(fd int) []pmtuReport {
	var out []pmtuReport
	buf := make([]byte, 128)
	oob := make([]byte, 256)
	for i := 0; i < 64; i++ {
		// The name is the destination of the packet the error is about,
		// for ICMP errors and local ones (whose payload is empty) alike.
		_, oobn, _, from, err := unix.Recvmsg(fd, buf, oob, unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
		if err != nil {
			return out
		}
		sa, ok := from.(*unix.SockaddrInet4)
		if !ok {
			continue
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			continue
		}
		for _, m := range msgs {
			if m.Header.Level != unix.IPPROTO_IP || m.Header.Type != unix.IP_RECVERR || len(m.Data) < 16 {
				continue
			}
			errno := binary.NativeEndian.Uint32(m.Data[0:4])
			info := binary.NativeEndian.Uint32(m.Data[8:12])
			if unix.Errno(errno) != unix.EMSGSIZE {
				continue
			}
			out = append(out, pmtuReport{dst: netip.AddrFrom4(sa.Addr), mtu: int(info)})
		}
	}
	return out
}

// icmp6Sender sends ICMPv6 errors; the kernel adds the IPv6 header and the
// checksum and picks the source address.
type icmp6Sender struct{ fd int }

func newICMP6Sender() (*icmp6Sender, error) {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMPV6)
	if err != nil {
		return nil, fmt.Errorf("raw ICMPv6 socket: %w", err)
	}
	// Receive nothing: block every ICMPv6 type.
	var filter unix.ICMPv6Filter
	for i := range filter.Data {
		filter.Data[i] = 0xffffffff
	}
	if err := unix.SetsockoptICMPv6Filter(fd, unix.SOL_ICMPV6, unix.ICMPV6_FILTER, &filter); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("ICMPv6 filter: %w", err)
	}
	return &icmp6Sender{fd: fd}, nil
}

func (s *icmp6Sender) send(b []byte, dst netip.Addr) error {
	return unix.Sendto(s.fd, b, 0, &unix.SockaddrInet6{Addr: dst.As16()})
}

func (s *icmp6Sender) close() error { return unix.Close(s.fd) }

// msgProbe is Linux's MSG_PROBE: do not send, only check the route.
const msgProbe = 0x10
