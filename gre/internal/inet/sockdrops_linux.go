package inet

import (
	"errors"
	"unsafe"

	"golang.org/x/sys/unix"
)

// SocketDrops returns how many packets the kernel dropped on a socket
// since it was opened because its receive buffer was full (SO_MEMINFO's
// SK_MEMINFO_DROPS): what a receive queue the program reads too slowly
// loses before the program sees it.
func SocketDrops(fd int) (uint64, error) {
	var mi [unix.SK_MEMINFO_VARS]uint32
	l := uint32(unsafe.Sizeof(mi))
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_MEMINFO,
		uintptr(unsafe.Pointer(&mi[0])), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return 0, e
	}
	if l < (unix.SK_MEMINFO_DROPS+1)*4 {
		return 0, errShortMeminfo
	}
	return uint64(mi[unix.SK_MEMINFO_DROPS]), nil
}

var errShortMeminfo = errors.New("SO_MEMINFO: short answer")
