//go:build linux

package ipsec

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/internal/netnstest"
)

// TestOtherCharon: with another process on UDP 500 in the namespace (as
// Debian's strongswan-starter charon would be), a managed charon is not
// started, and the error names the process and what to do.
func TestOtherCharon(t *testing.T) {
	if !netnstest.Run(t, "dmvipsecport") {
		return
	}
	if err := checkIKEPorts(); err != nil {
		t.Fatalf("fresh namespace: %v", err)
	}
	c, err := net.ListenUDP("udp", &net.UDPAddr{Port: 500})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = checkIKEPorts()
	comm := procComm(os.Getpid())
	want := fmt.Sprintf("UDP port 500 is held by %s (pid %d", comm, os.Getpid())
	if !errors.Is(err, ErrPortsTaken) || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "ipsec.charon: system") {
		t.Fatalf("got %v, want it to contain %q", err, want)
	}
	if _, err := os.Stat(DefaultCharon); err != nil {
		return // the check above is the point; starting needs strongSwan
	}
	dir := filepath.Join(t.TempDir(), "state")
	ch := newCharon(Config{Managed: true, Dir: dir}.withDefaults(), ModeUserspace, zap.NewNop())
	if err := ch.start(context.Background()); !errors.Is(err, ErrPortsTaken) {
		ch.stop()
		t.Fatalf("managed charon beside another IKE daemon: got %v, want ErrPortsTaken", err)
	}
	if ch.pid() != 0 {
		t.Error("a charon was started")
	}
}
