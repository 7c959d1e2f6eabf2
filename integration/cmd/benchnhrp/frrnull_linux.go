package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// The null hub: the ceiling of the side-by-side benchmark. It answers
// every Registration Request on the same ip_gre device the hubs use, with
// nothing else — no cache, no neighbour, no policy: it reads a batch
// (recvmmsg on an AF_PACKET socket for NHRP), decodes each request, turns
// it into its reply and sends the batch back (sendmmsg). What it reaches
// is what the simulator, the VM's NIC and the guest kernel's GRE path
// allow; a hub that comes near it is measured against the rig, not
// against itself.

// startNull starts the null hub (this binary again, role nullhub).
func (g *guest) startNull() error {
	if err := runAll(
		[]string{"ip", "link", "add", benchTun, "type", "gre", "key", "42", "ttl", "64", "local", guestAddr, "dev", "eth0"},
		[]string{"ip", "link", "set", benchTun, "up"},
	); err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), envRole+"=nullhub")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stdout
	if err := cmd.Start(); err != nil {
		return err
	}
	g.procs = append(g.procs, hubProc{name: "nullhub", cmd: cmd})
	return nil
}

// runNullHub is the null hub's process.
func runNullHub() int {
	if err := nullHub(benchTun); err != nil {
		fmt.Println("FATAL null hub:", err)
		return 1
	}
	return 0
}

func nullHub(dev string) error {
	ifi, err := net.InterfaceByName(dev)
	if err != nil {
		return err
	}
	proto := htons(gre.ProtoNHRP)
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(proto))
	if err != nil {
		return fmt.Errorf("packet socket: %w", err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 4<<20)
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
		return fmt.Errorf("bind: %w", err)
	}
	const batch = 64
	var (
		rh, wh     [batch]mmsghdr
		riov, wiov [batch]unix.Iovec
		rsa, wsa   [batch]unix.RawSockaddrLinklayer
		rbuf       [batch][2048]byte
		wbuf       [batch][]byte
		p          wire.Packet
	)
	for i := range batch {
		riov[i].Base = &rbuf[i][0]
		riov[i].SetLen(len(rbuf[i]))
		rh[i].hdr.Iov, rh[i].hdr.Iovlen = &riov[i], 1
		rh[i].hdr.Name = (*byte)(unsafe.Pointer(&rsa[i]))
		wh[i].hdr.Iov, wh[i].hdr.Iovlen = &wiov[i], 1
		wh[i].hdr.Name = (*byte)(unsafe.Pointer(&wsa[i]))
		wh[i].hdr.Namelen = unix.SizeofSockaddrLinklayer
		wbuf[i] = make([]byte, 0, 2048)
	}
	for {
		for i := range batch {
			rh[i].hdr.Namelen = unix.SizeofSockaddrLinklayer
		}
		n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&rh[0])), batch, unix.MSG_WAITFORONE, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return fmt.Errorf("recvmmsg: %w", e)
		}
		k := 0
		for i := range int(n) {
			if rsa[i].Halen != 4 || p.UnmarshalBinary(rbuf[i][:rh[i].n]) != nil || p.Type != wire.TypeRegistrationRequest {
				continue
			}
			p.Type = wire.TypeRegistrationReply
			b, err := p.AppendBinary(wbuf[k][:0])
			if err != nil {
				continue
			}
			wbuf[k] = b
			wiov[k].Base = &b[0]
			wiov[k].SetLen(len(b))
			wsa[k] = unix.RawSockaddrLinklayer{Family: unix.AF_PACKET, Protocol: proto, Ifindex: int32(ifi.Index), Halen: 4}
			copy(wsa[k].Addr[:4], rsa[i].Addr[:4])
			k++
		}
		for sent := 0; sent < k; {
			m, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&wh[sent])), uintptr(k-sent), 0, 0, 0)
			switch {
			case e == 0:
				sent += int(m)
			case e == unix.EINTR || errors.Is(e, unix.ENOBUFS):
			default:
				return fmt.Errorf("sendmmsg: %w", e)
			}
		}
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
