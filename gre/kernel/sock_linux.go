package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/opendmvpn/dmvpn/gre"
)

// mcastConn captures multicast/broadcast packets leaving the device and
// sends unicast copies to NBMA addresses.
type mcastConn interface {
	// Read returns the next captured packet (network header first).
	Read(b []byte) (int, error)
	// Send transmits pkt through the device to an NBMA address with the
	// given ethertype (0x0800 or 0x86DD).
	Send(pkt []byte, proto uint16, nbma netip.Addr) error
	Close() error
}

// mcastFilter accepts only outgoing packets to IPv4 multicast, limited
// broadcast or the tunnel broadcast address, and IPv6 multicast, so data
// traffic never reaches userspace: received packets (the socket sees both
// directions) and outgoing unicast, NHRP included, are refused.
func mcastFilter(tunnel netip.Prefix) ([]bpf.RawInstruction, error) {
	return bpf.Assemble(mcastProgram(tunnel))
}

// mcastProgram is mcastFilter's program; its first instruction loads the
// packet type (PACKET_OUTGOING for what the device sends).
func mcastProgram(tunnel netip.Prefix) []bpf.Instruction {
	bcast := uint32(0xffffffff)
	if tunnel.IsValid() && tunnel.Addr().Is4() && tunnel.Bits() < 31 {
		a := tunnel.Masked().Addr().As4()
		bcast = binary.BigEndian.Uint32(a[:]) | (1<<(32-tunnel.Bits()) - 1)
	}
	// Jumps skip to "accept" (13) or "refuse" (14).
	return []bpf.Instruction{
		/* 0 */ bpf.LoadExtension{Num: bpf.ExtType},
		/* 1 */ bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: unix.PACKET_OUTGOING, SkipTrue: 12},
		/* 2 */ bpf.LoadAbsolute{Off: 0, Size: 1},
		/* 3 */ bpf.ALUOpConstant{Op: bpf.ALUOpShiftRight, Val: 4},
		/* 4 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: 6, SkipTrue: 6},
		/* 5 */ bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: 4, SkipTrue: 8},
		/* 6 */ bpf.LoadAbsolute{Off: 16, Size: 4}, // IPv4 destination
		/* 7 */ bpf.JumpIf{Cond: bpf.JumpGreaterOrEqual, Val: 0xe0000000, SkipTrue: 5},
		/* 8 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: bcast, SkipTrue: 4},
		/* 9 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: 0xffffffff, SkipTrue: 3},
		/* 10 */ bpf.RetConstant{Val: 0},
		/* 11 */ bpf.LoadAbsolute{Off: 24, Size: 1}, // IPv6 destination, first byte
		/* 12 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: 0xff, SkipFalse: 1},
		/* 13 */ bpf.RetConstant{Val: 0xffff},
		/* 14 */ bpf.RetConstant{Val: 0},
	}
}

type afPacket struct {
	fd      *os.File
	raw     int
	ifindex int
}

// listenMulticast opens an ETH_P_ALL datagram socket on the device with
// mcastFilter. Copies are sent on the same socket, which the kernel does
// not loop back to it, so they are not captured again.
func listenMulticast(ifindex int, tunnel netip.Prefix) (mcastConn, error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		return nil, fmt.Errorf("multicast socket: %w", err)
	}
	filter, err := mcastFilter(tunnel)
	if err == nil {
		prog := unix.SockFprog{Len: uint16(len(filter)), Filter: (*unix.SockFilter)(rawFilterPtr(filter))}
		err = unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &prog)
	}
	if err == nil {
		err = unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifindex})
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("multicast socket: %w", err)
	}
	return &afPacket{fd: os.NewFile(uintptr(fd), "mcast"), raw: fd, ifindex: ifindex}, nil
}

// Read returns the next captured packet.
func (c *afPacket) Read(b []byte) (int, error) { return c.fd.Read(b) }

// Send transmits a copy to an NBMA address through the device.
func (c *afPacket) Send(pkt []byte, proto uint16, nbma netip.Addr) error {
	a := nbma.As4()
	sa := &unix.SockaddrLinklayer{Protocol: htons(proto), Ifindex: c.ifindex, Halen: 4}
	copy(sa.Addr[:], a[:])
	return unix.Sendto(c.raw, pkt, 0, sa)
}

// Close closes the socket.
func (c *afPacket) Close() error { return c.fd.Close() }

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// SetMulticast sets the NBMA replication list; the capture socket opens
// with the first non-empty list.
func (d *Device) SetMulticast(nbma []netip.Addr) error {
	if err := d.checkMulticast(nbma); err != nil {
		return err
	}
	d.mcast.Set(nbma)
	return d.openMulticast()
}

var _ gre.MulticastUpdater = (*Device)(nil)

// UpdateMulticast implements gre.MulticastUpdater.
func (d *Device) UpdateMulticast(add, remove []netip.Addr) error {
	if err := d.checkMulticast(add); err != nil {
		return err
	}
	d.mcast.Update(add, remove)
	return d.openMulticast()
}

func (d *Device) checkMulticast(nbma []netip.Addr) error {
	if d.closed.Load() {
		return gre.ErrClosed
	}
	for _, a := range nbma {
		if !a.Is4() {
			return fmt.Errorf("kernel: multicast NBMA %v is not IPv4", a)
		}
	}
	return nil
}

// openMulticast opens the capture socket once the list has an address.
func (d *Device) openMulticast() error {
	if len(d.mcast.Load()) == 0 {
		return nil
	}
	d.mcMu.Lock()
	defer d.mcMu.Unlock()
	if d.mcConn != nil {
		return nil
	}
	c, err := d.env.listenMulticast(d.index, d.cfg.Prefix)
	if err != nil {
		return fmt.Errorf("kernel: %w", err)
	}
	d.mcConn = c
	d.wg.Add(1)
	go d.replicateLoop(c)
	return nil
}

// replicateLoop sends every captured packet to each NBMA of the list.
func (d *Device) replicateLoop(c mcastConn) {
	defer d.wg.Done()
	b := make([]byte, 65536)
	for {
		n, err := c.Read(b)
		if err != nil {
			if d.closed.Load() || errors.Is(err, os.ErrClosed) {
				return
			}
			d.stats.Drop(gre.DropTunError, 1)
			continue
		}
		d.replicate(c, b[:n])
	}
}

// replicate sends one captured multicast/broadcast packet to the list.
func (d *Device) replicate(c mcastConn, pkt []byte) {
	if len(pkt) < 20 {
		d.stats.Drop(gre.DropMalformed, 1)
		return
	}
	proto := uint16(gre.ProtoIPv4)
	if pkt[0]>>4 == 6 {
		proto = gre.ProtoIPv6
	}
	for _, nbma := range d.mcast.Load() {
		if err := c.Send(pkt, proto, nbma); err != nil {
			d.stats.Drop(gre.DropSendError, 1)
			continue
		}
		if p := d.stats.Peer(nbma); p != nil {
			p.TxPackets.Add(1)
			p.TxBytes.Add(uint64(len(pkt)))
		}
	}
}
