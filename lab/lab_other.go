//go:build !linux

package lab

import (
	"context"
	"errors"
	"io"

	"github.com/opendmvpn/dmvpn/lab/testbed"
)

var errLinux = errors.New("dmvpn-lab needs Linux network namespaces")

// Up fails outside Linux.
func (l *Lab) Up(ctx context.Context, topo string, opts UpOptions) error { return errLinux }

// Down fails outside Linux.
func (l *Lab) Down(ctx context.Context) error { return errLinux }

// Status fails outside Linux.
func (l *Lab) Status(ctx context.Context) error { return errLinux }

// Exec fails outside Linux.
func (l *Lab) Exec(ctx context.Context, node string, args []string, stdin io.Reader) (int, error) {
	return 1, errLinux
}

// Shell fails outside Linux.
func (l *Lab) Shell(node string) error { return errLinux }

// Fail fails outside Linux.
func (l *Lab) Fail(ctx context.Context, node, isp string, mode testbed.CutMode) error {
	return errLinux
}

// Restore fails outside Linux.
func (l *Lab) Restore(ctx context.Context, node, isp string) error { return errLinux }

// Restart needs Linux.
func (l *Lab) Restart(ctx context.Context, node string, kill bool) error { return errLinux }

// Revoke needs Linux.
func (l *Lab) Revoke(ctx context.Context, node string) error { return errLinux }
