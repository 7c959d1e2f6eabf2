package ipsec

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"
)

// fakeVICI is charon's VICI socket at the message level: it records the
// name of every command it is sent and answers each with success.
type fakeVICI struct {
	path string
	ln   net.Listener

	mu   sync.Mutex
	cmds []string
}

// newFakeVICI listens on a socket in a test directory; it is closed with
// the test.
func newFakeVICI(t *testing.T) *fakeVICI {
	t.Helper()
	f := &fakeVICI{path: filepath.Join(t.TempDir(), "charon.vici")}
	ln, err := net.Listen("unix", f.path)
	if err != nil {
		t.Fatal(err)
	}
	f.ln = ln
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { f.serve(c) })
		}
	})
	return f
}

// VICI packet types (strongSwan's vici_socket.h).
const (
	viciCmdRequest  = 0
	viciCmdResponse = 1
	viciKeyValue    = 3
)

// serve answers one connection's commands until it closes.
func (f *fakeVICI) serve(c net.Conn) {
	defer c.Close()
	for {
		var n uint32
		if err := binary.Read(c, binary.BigEndian, &n); err != nil {
			return
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(c, p); err != nil {
			return
		}
		if len(p) < 2 || p[0] != viciCmdRequest || len(p) < 2+int(p[1]) {
			return
		}
		f.mu.Lock()
		f.cmds = append(f.cmds, string(p[2:2+int(p[1])]))
		f.mu.Unlock()
		// success = yes
		out := []byte{viciCmdResponse, viciKeyValue, 7}
		out = append(out, "success"...)
		out = binary.BigEndian.AppendUint16(out, 3)
		out = append(out, "yes"...)
		if err := binary.Write(c, binary.BigEndian, uint32(len(out))); err != nil {
			return
		}
		if _, err := c.Write(out); err != nil {
			return
		}
	}
}

// commands returns the commands received so far, and forgets them.
func (f *fakeVICI) commands() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.cmds
	f.cmds = nil
	return out
}

// connect makes the fake the manager's command session.
func (f *fakeVICI) connect(t *testing.T, m *Manager) {
	t.Helper()
	c, err := dialVICI(context.Background(), f.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.close() })
	m.mu.Lock()
	m.cmd, m.connected = c, true
	m.mu.Unlock()
}
