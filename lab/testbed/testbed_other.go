//go:build !linux

package testbed

import (
	"context"
	"errors"
)

// Testbed is a created topology; only Linux has network namespaces.
type Testbed struct {
	Prefix string
	log    Logger
}

// New fails: network namespaces need Linux.
func New(ctx context.Context, spec Spec, opts ...Option) (*Testbed, error) {
	return nil, errors.New("testbed: needs Linux network namespaces")
}

// Close does nothing.
func (tb *Testbed) Close() error { return nil }

// Cut fails: network namespaces need Linux.
func Cut(ctx context.Context, ns, dev string, mode CutMode) error {
	return errors.New("testbed: needs Linux network namespaces")
}

// Restore fails: network namespaces need Linux.
func Restore(ctx context.Context, ns, dev string) error {
	return errors.New("testbed: needs Linux network namespaces")
}
