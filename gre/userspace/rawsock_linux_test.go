package userspace

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestPktinfoIfindex(t *testing.T) {
	oob := make([]byte, unix.CmsgSpace(unix.SizeofInet4Pktinfo))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = unix.IPPROTO_IP, unix.IP_PKTINFO
	h.SetLen(unix.CmsgLen(unix.SizeofInet4Pktinfo))
	binary.NativeEndian.PutUint32(oob[unix.CmsgLen(0):], 7)
	if got := pktinfoIfindex(oob); got != 7 {
		t.Fatalf("ifindex %d, want 7", got)
	}
	if got := pktinfoIfindex(nil); got != 0 {
		t.Fatalf("empty control data gave %d", got)
	}
	h.SetLen(4000) // corrupt length
	if got := pktinfoIfindex(oob); got != 0 {
		t.Fatalf("corrupt control data gave %d", got)
	}
}

// TestRawSenderRoutedAsGRE checks that the kernel routes what the raw
// sender sends as protocol GRE: a policy rule on `ipproto gre` must see it
// (the IPsec rules that keep GRE from leaving in clear depend on it), for
// batches and single sends alike.
func TestRawSenderRoutedAsGRE(t *testing.T) {
	if !inNetns(t) {
		return
	}
	if !ProtoRouted() {
		t.Skip("skipping: needs a kernel that applies IP_PROTOCOL to raw sends (Linux 6.x); this one routes GRE sent with IP_HDRINCL as protocol 255")
	}
	ipCmd(t, "link", "add", "wan0", "type", "veth", "peer", "name", "wan0p")
	ipCmd(t, "link", "set", "wan0", "up")
	ipCmd(t, "link", "set", "wan0p", "up")
	ipCmd(t, "addr", "add", "198.51.100.1/24", "dev", "wan0")
	ipCmd(t, "rule", "add", "pref", "100", "ipproto", "gre", "prohibit")

	s, err := newRawSender(4)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	dst := [4]byte{198, 51, 100, 2}
	pkt := make([]byte, 28)
	pkt[0], pkt[8], pkt[9] = 0x45, 64, unix.IPPROTO_GRE
	binary.BigEndian.PutUint16(pkt[2:], uint16(len(pkt)))
	copy(pkt[16:20], dst[:])
	binary.BigEndian.PutUint16(pkt[22:], 0x0800)

	if err := s.sendOne(pkt); err != unix.EACCES {
		t.Fatalf("single send under `ipproto gre prohibit`: %v, want EACCES", err)
	}
	s.set(0, pkt)
	if n, err := s.send(0, 1); err != unix.EACCES {
		t.Fatalf("batch send under `ipproto gre prohibit`: sent %d, error %v, want EACCES", n, err)
	}
	// Without the rule the same packets go out.
	ipCmd(t, "rule", "del", "pref", "100")
	if err := s.sendOne(pkt); err != nil {
		t.Fatalf("single send: %v", err)
	}
	if n, err := s.send(0, 1); n != 1 || err != nil {
		t.Fatalf("batch send: sent %d, %v", n, err)
	}
}

// TestRawSenderPendingICMPError: an ICMP error about a datagram sent to a
// peer that takes no GRE (protocol unreachable: its dmvpnd died) is left
// on the sending socket as its pending error; the next datagram, to
// another peer, still goes out (it used to fail with that error and be
// lost), for single sends and batches alike.
func TestRawSenderPendingICMPError(t *testing.T) {
	if !inNetns(t) {
		return
	}
	// The dead peer: another namespace at 198.51.100.2 with no GRE socket.
	peer := fmt.Sprintf("dmvudead%dx%d", os.Getpid(), time.Now().UnixNano()%1e6)
	ipCmd(t, "netns", "add", peer)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", peer).Run() })
	ipCmd(t, "link", "add", "wan0", "type", "veth", "peer", "name", "wan0p", "netns", peer)
	ipCmd(t, "addr", "add", "198.51.100.1/24", "dev", "wan0")
	ipCmd(t, "link", "set", "wan0", "up")
	ipCmd(t, "-n", peer, "addr", "add", "198.51.100.2/24", "dev", "wan0p")
	ipCmd(t, "-n", peer, "link", "set", "wan0p", "up")

	// The live peer: a GRE socket of this namespace at 127.0.0.1.
	bufs := [][]byte{make([]byte, 2048)}
	rcv, err := newRawReceiver(netip.MustParseAddr("127.0.0.1"), bufs)
	if err != nil {
		t.Fatal(err)
	}
	defer rcv.close()
	s, err := newRawSender(2)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()

	gre := func(dst [4]byte, mark byte) []byte {
		pkt := make([]byte, 29)
		pkt[0], pkt[8], pkt[9] = 0x45, 64, unix.IPPROTO_GRE
		binary.BigEndian.PutUint16(pkt[2:], uint16(len(pkt)))
		copy(pkt[16:20], dst[:])
		binary.BigEndian.PutUint16(pkt[22:], 0x0800)
		pkt[28] = mark
		return pkt
	}
	dead, live := [4]byte{198, 51, 100, 2}, [4]byte{127, 0, 0, 1}
	// pending sends to the dead peer and waits until its ICMP error
	// reached the sender (POLLERR: its pending error or error queue),
	// without taking it.
	pending := func() {
		t.Helper()
		readErrQueue(s.fd) // only what is queued from here on counts
		if err := s.sendOne(gre(dead, 1)); err != nil {
			t.Fatalf("send to the dead peer: %v", err)
		}
		fds := []unix.PollFd{{Fd: int32(s.fd), Events: 0}}
		n, err := unix.Poll(fds, 5000)
		if err != nil || n != 1 || fds[0].Revents&unix.POLLERR == 0 {
			t.Fatalf("no ICMP error from the dead peer reached the sender (poll %d, %v, revents %#x)", n, err, fds[0].Revents)
		}
	}
	lens, ifidx := make([]int, 1), make([]int, 1)
	received := func(mark byte) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			n, err := rcv.recv(lens, ifidx)
			if err != nil || n != 1 {
				continue // the receiver's own pending error, or its timeout
			}
			if lens[0] > 28 && bufs[0][lens[0]-1] == mark {
				return
			}
		}
		t.Fatalf("the live peer did not receive datagram %d", mark)
	}

	// The dead peer's error then a single send to the live one.
	pending()
	if err := s.sendOne(gre(live, 2)); err != nil {
		t.Fatalf("single send to the live peer after the dead one's ICMP error: %v", err)
	}
	received(2)

	// The same in a batch: the dead peer's datagram, then the live one's.
	for i := 0; i < 2; i++ {
		pending()
		pkt := gre(live, byte(4+i))
		s.set(0, pkt)
		if n, err := s.send(0, 1); n != 1 || err != nil {
			t.Fatalf("batch send to the live peer after the dead one's ICMP error: sent %d, %v", n, err)
		}
		received(byte(4 + i))
	}
}
