//go:build !linux

package control

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
)

// listenUnixSocket is Linux only: elsewhere a socket's mode cannot be set
// before bind, and dmvpnd does not chmod after.
func listenUnixSocket(path string, mode os.FileMode, gid int) (net.Listener, error) {
	return nil, fmt.Errorf("control socket %s: %w", path, errors.ErrUnsupported)
}

// Peer is who is at the other end of a unix socket connection.
type Peer struct {
	PID, UID, GID int
}

func (p Peer) inGroup(int) bool { return false }

// peerContext stores nothing: peer credentials are read on Linux only.
func peerContext(ctx context.Context, _ net.Conn) context.Context { return ctx }
