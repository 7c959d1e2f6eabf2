//go:build linux

package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeManager is a service manager's notify socket: a unix datagram
// socket whose messages the test reads.
type fakeManager struct {
	t    *testing.T
	conn *net.UnixConn
	addr string
}

func newFakeManager(t *testing.T, addr string) *fakeManager {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &fakeManager{t: t, conn: c, addr: addr}
}

// next returns the next message, failing after a deadline.
func (m *fakeManager) next() string {
	m.t.Helper()
	buf := make([]byte, 4096)
	m.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := m.conn.Read(buf)
	if err != nil {
		m.t.Fatalf("no notification: %v", err)
	}
	return string(buf[:n])
}

func TestNotifier(t *testing.T) {
	for _, tc := range []struct{ name, addr string }{
		{"path", filepath.Join(t.TempDir(), "notify")},
		{"abstract", "@dmvpnd-test-notify-" + filepath.Base(t.TempDir())},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newFakeManager(t, tc.addr)
			t.Setenv("NOTIFY_SOCKET", tc.addr)
			n := newNotifier()
			if os.Getenv("NOTIFY_SOCKET") != "" {
				t.Error("NOTIFY_SOCKET left in the environment (children would inherit it)")
			}
			if err := n.Ready("running: hub\nhub1"); err != nil {
				t.Fatal(err)
			}
			if got := m.next(); got != "READY=1\nSTATUS=running: hub hub1\n" {
				t.Errorf("ready: %q", got)
			}
			n.Reloading()
			if got := m.next(); !strings.HasPrefix(got, "RELOADING=1\nMONOTONIC_USEC=") || strings.Contains(got, "MONOTONIC_USEC=0\n") {
				t.Errorf("reloading: %q", got)
			}
			n.Stopping()
			if got := m.next(); got != "STOPPING=1\nSTATUS=stopping\n" {
				t.Errorf("stopping: %q", got)
			}
		})
	}
	t.Setenv("NOTIFY_SOCKET", "")
	if n := newNotifier(); n.Enabled() || n.Ready("x") != nil {
		t.Error("without NOTIFY_SOCKET the notifier must do nothing")
	}
}
