//go:build linux

package nlops

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// The kernel's resolution requests, and nothing else: the neighbour
// group (RTNLGRP_NEIGH) carries every change of every neighbour entry,
// and a hub programming thousands of spokes received, decoded and dropped
// one event per entry it set (vishvananda/netlink's subscription: 8 % of
// a kernel hub's time in bench-nhrp-frr's profile at 10,000 spokes). A
// socket filter keeps only RTM_GETNEIGH in the kernel, before a copy is
// queued, and the socket is read through Go's netpoller.

// missFilter accepts netlink messages of type RTM_GETNEIGH only. A
// notification is one message per datagram; nlmsg_type is at offset 4,
// in host order, which a BPF load reads as big-endian.
func missFilter() ([]bpf.RawInstruction, error) {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], unix.RTM_GETNEIGH)
	return bpf.Assemble([]bpf.Instruction{
		bpf.LoadAbsolute{Off: 4, Size: 2},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(binary.BigEndian.Uint16(b[:])), SkipFalse: 1},
		bpf.RetConstant{Val: 0xffff},
		bpf.RetConstant{Val: 0},
	})
}

// subscribeMisses delivers the kernel's resolution requests (RTM_GETNEIGH,
// as NeighUpdates with the link index and the address asked for) until
// done is closed; the channel is closed when the subscription fails
// (onError is told why) or ends.
func subscribeMisses(ch chan<- netlink.NeighUpdate, done <-chan struct{}, onError func(error)) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	filter, err := missFilter()
	if err == nil {
		prog := unix.SockFprog{Len: uint16(len(filter)), Filter: (*unix.SockFilter)(unsafe.Pointer(&filter[0]))}
		err = unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &prog)
	}
	if err == nil {
		err = unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1 << (unix.RTNLGRP_NEIGH - 1)})
	}
	if err != nil {
		unix.Close(fd)
		return fmt.Errorf("netlink miss subscription: %w", err)
	}
	f := os.NewFile(uintptr(fd), "netlink-misses")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return err
	}
	go func() {
		<-done
		f.Close() // ends a read waiting below
	}()
	go func() {
		defer close(ch)
		buf := make([]byte, 1<<16)
		for {
			var n int
			var rerr error
			err := rc.Read(func(fd uintptr) bool {
				n, _, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
				return rerr != unix.EAGAIN
			})
			if err == nil {
				err = rerr
			}
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				select {
				case <-done:
				default:
					if onError != nil {
						onError(err) // ENOBUFS: requests lost; resubscribe
					}
				}
				return
			}
			msgs, err := syscall.ParseNetlinkMessage(buf[:n])
			if err != nil {
				continue
			}
			for _, m := range msgs {
				u, ok := parseMiss(m)
				if !ok {
					continue
				}
				select {
				case ch <- u:
				case <-done:
					return
				}
			}
		}
	}()
	return nil
}

// parseMiss reads an RTM_GETNEIGH message: the ndmsg's family and link
// index, and NDA_DST.
func parseMiss(m syscall.NetlinkMessage) (netlink.NeighUpdate, bool) {
	if m.Header.Type != unix.RTM_GETNEIGH || len(m.Data) < unix.SizeofNdMsg {
		return netlink.NeighUpdate{}, false
	}
	fam := int(m.Data[0])
	idx := int(int32(binary.NativeEndian.Uint32(m.Data[4:8])))
	attrs := m.Data[unix.SizeofNdMsg:]
	for len(attrs) >= 4 {
		l := int(binary.NativeEndian.Uint16(attrs[0:2]))
		typ := binary.NativeEndian.Uint16(attrs[2:4])
		if l < 4 || l > len(attrs) {
			break
		}
		if typ == unix.NDA_DST && (l-4 == 4 || l-4 == 16) {
			ip := make(net.IP, l-4)
			copy(ip, attrs[4:l])
			return netlink.NeighUpdate{Type: unix.RTM_GETNEIGH, Neigh: netlink.Neigh{LinkIndex: idx, Family: fam, IP: ip}}, true
		}
		attrs = attrs[min(len(attrs), (l+3)&^3):]
	}
	return netlink.NeighUpdate{}, false
}
