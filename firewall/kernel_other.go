//go:build !linux

package firewall

import (
	"context"
	"errors"
)

var errNotLinux = errors.New("firewall: nftables needs Linux")

type kernelTable struct{}

// NewKernelTable returns the Table that programs the kernel's nftables;
// off Linux every call fails.
func NewKernelTable(opts ...any) Table { return kernelTable{} }

func (kernelTable) Replace(context.Context, *Ruleset) error { return errNotLinux }

func (kernelTable) Counters(context.Context) (map[string]Counter, error) { return nil, errNotLinux }

func (kernelTable) Remove(context.Context) error { return errNotLinux }
