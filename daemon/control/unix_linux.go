package control

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// listenUnixSocket creates a listening unix socket at path that is never
// more open than mode: the socket is bound inside a fresh directory of
// mode 0700 beside path (its inode given mode before bind, so the kernel
// creates the file with it), given to the group gid (when ≥ 0) and its
// mode made exact there — where no one else can reach it — and only then
// renamed into place. No chmod of a reachable file, no umask change
// (umask is the whole process's).
func listenUnixSocket(path string, mode os.FileMode, gid int) (net.Listener, error) {
	priv, err := os.MkdirTemp(filepath.Dir(path), ".s")
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	defer os.RemoveAll(priv)
	tmp := filepath.Join(priv, "s")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close() // the listener holds a dup
	if err := unix.Fchmod(fd, uint32(mode.Perm())); err != nil {
		return nil, fmt.Errorf("control socket: setting its mode before bind: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: tmp}); err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if err := unix.Listen(fd, unix.SOMAXCONN); err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if gid >= 0 {
		if err := os.Lchown(tmp, -1, gid); err != nil {
			return nil, fmt.Errorf("control socket %s: group %d: %w", path, gid, err)
		}
	}
	// The umask may have taken bits off mode at bind: put them back while
	// the file is still out of reach.
	if st, err := os.Lstat(tmp); err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	} else if st.Mode().Perm() != mode.Perm() {
		if err := os.Chmod(tmp, mode.Perm()); err != nil {
			return nil, fmt.Errorf("control socket %s: %w", path, err)
		}
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	l, err := net.FileListener(f)
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	ul := l.(*net.UnixListener)
	ul.SetUnlinkOnClose(false) // it would unlink the path it was bound at
	return &unlinkListener{UnixListener: ul, path: path}, nil
}

// unlinkListener removes its socket file when closed.
type unlinkListener struct {
	*net.UnixListener
	path string
	once sync.Once
}

// Close stops listening and removes the socket file.
func (l *unlinkListener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() { os.Remove(l.path) })
	return err
}

// Addr is the socket's path.
func (l *unlinkListener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

// Peer is who is at the other end of a unix socket connection.
type Peer struct {
	PID, UID, GID int
}

// peerOf reads a unix connection's peer credentials (SO_PEERCRED).
func peerOf(c net.Conn) (Peer, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return Peer{}, errors.New("not a unix socket")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Peer{}, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Peer{}, err
	}
	if cerr != nil {
		return Peer{}, fmt.Errorf("SO_PEERCRED: %w", cerr)
	}
	return Peer{PID: int(cred.Pid), UID: int(cred.Uid), GID: int(cred.Gid)}, nil
}

// inGroup reports whether the peer process has gid among its groups: its
// primary group, or a supplementary one (read from /proc).
func (p Peer) inGroup(gid int) bool {
	if p.GID == gid {
		return true
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(p.PID) + "/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "Groups:")
		if !ok {
			continue
		}
		for _, g := range strings.Fields(rest) {
			if n, err := strconv.Atoi(g); err == nil && n == gid {
				return true
			}
		}
	}
	return false
}

// peerContext stores a unix connection's peer in its requests' context.
func peerContext(ctx context.Context, c net.Conn) context.Context {
	if _, ok := c.(*net.UnixConn); !ok {
		return ctx
	}
	p, err := peerOf(c)
	if err != nil {
		return context.WithValue(ctx, peerKey{}, peerErr{err})
	}
	return context.WithValue(ctx, peerKey{}, p)
}
