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
