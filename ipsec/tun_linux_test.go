//go:build linux

package ipsec

import (
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/opendmvpn/dmvpn/internal/netnstest"
)

// A process's TUN is found through its fdinfo, by the name the kernel
// gave it.
func TestTUNOf(t *testing.T) {
	if !netnstest.Run(t, "ipsectun") {
		return
	}
	if _, err := tunOf(os.Getpid()); !errors.Is(err, ErrNoTUN) {
		t.Fatalf("before opening a TUN: %v", err)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR, 0)
	if err != nil {
		t.Skipf("skipping: needs /dev/net/tun: %v", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("ipsec%d")
	if err != nil {
		t.Fatal(err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		t.Fatal(err)
	}
	got, err := tunOf(os.Getpid())
	if err != nil || got != ifr.Name() || got == "" {
		t.Errorf("tunOf = %q, %v; want %q", got, err, ifr.Name())
	}
}
