package inet

import (
	"testing"

	"golang.org/x/sys/unix"
)

// TestSocketDrops: datagrams sent to a socket whose small receive buffer
// is never read are dropped by the kernel, and SocketDrops counts exactly
// the ones that did not fit.
func TestSocketDrops(t *testing.T) {
	rx, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(rx)
	if err := unix.SetsockoptInt(rx, unix.SOL_SOCKET, unix.SO_RCVBUF, 4096); err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(rx, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(rx)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(tx)
	if d, err := SocketDrops(rx); err != nil || d != 0 {
		t.Fatalf("before: %d, %v", d, err)
	}
	const sent = 200
	for range sent {
		if err := unix.Sendto(tx, make([]byte, 512), 0, sa); err != nil {
			t.Fatal(err)
		}
	}
	got := 0
	buf := make([]byte, 1024)
	for {
		if _, _, err := unix.Recvfrom(rx, buf, unix.MSG_DONTWAIT); err != nil {
			break
		}
		got++
	}
	d, err := SocketDrops(rx)
	if err != nil {
		t.Fatal(err)
	}
	if d == 0 || int(d)+got != sent {
		t.Errorf("received %d, drops counted %d, of %d sent", got, d, sent)
	}
}
