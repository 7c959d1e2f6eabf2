package userspace

import (
	"encoding/binary"
	"testing"
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
