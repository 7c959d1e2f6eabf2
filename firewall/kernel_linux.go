//go:build linux

package firewall

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// kernelTable is the Table of the kernel's nftables through netlink.
type kernelTable struct {
	opts []nftables.ConnOption
}

// NewKernelTable returns the Table that programs the kernel's nftables
// with google/nftables: every Replace is one netlink batch (add, delete
// and add the table again, then its counters, chains and rules), which
// the kernel commits whole or not at all. opts reach nftables.New (a
// network namespace, a test dialer).
func NewKernelTable(opts ...nftables.ConnOption) Table {
	return &kernelTable{opts: opts}
}

// rcvbuf is the receive buffer of the netlink socket: the kernel acks
// every message of a batch, and the acks of a few hundred rules overflow
// the default buffer (ENOBUFS, the outcome of the batch unknown).
const rcvbuf = 16 << 20

// sockOpts sizes the socket's receive buffer (forcing past rmem_max when
// allowed) and bounds its calls by ctx's deadline; both are best effort.
func sockOpts(ctx context.Context) nftables.ConnOption {
	return nftables.WithSockOptions(func(c *netlink.Conn) error {
		if raw, err := c.SyscallConn(); err == nil {
			raw.Control(func(fd uintptr) {
				if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf) != nil {
					unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf)
				}
			})
		}
		if d, ok := ctx.Deadline(); ok {
			c.SetDeadline(d)
		}
		return nil
	})
}

func (k *kernelTable) conn(ctx context.Context) (*nftables.Conn, error) {
	c, err := nftables.New(append([]nftables.ConnOption{sockOpts(ctx)}, k.opts...)...)
	if err != nil {
		return nil, fmt.Errorf("firewall: nftables: %w", err)
	}
	return c, nil
}

func table(name string) *nftables.Table {
	return &nftables.Table{Family: nftables.TableFamilyINet, Name: name}
}

// Replace implements Table.
func (k *kernelTable) Replace(ctx context.Context, rs *Ruleset) error {
	if err := rs.Validate(); err != nil {
		return err
	}
	if err := k.batch(ctx, TableName, rs, false); err != nil {
		err = firstLeaf(err)
		switch {
		case errors.Is(err, syscall.EPERM):
			return fmt.Errorf("firewall: replacing table inet %s: %w (needs CAP_NET_ADMIN)", TableName, err)
		case errors.Is(err, syscall.ENOBUFS), ctx.Err() != nil:
			// Not a refusal: the acks were lost or the call gave up.
			return fmt.Errorf("firewall: replacing table inet %s: %w", TableName, err)
		}
		return refused(rs, err, func(p *Ruleset) error { return k.batch(ctx, checkTable, p, true) })
	}
	return nil
}

// firstLeaf returns the first error inside err that wraps no list: the
// library joins one copy of the kernel's refusal per message of the batch.
func firstLeaf(err error) error {
	for {
		switch u := err.(type) {
		case interface{ Unwrap() []error }:
			if es := u.Unwrap(); len(es) > 0 {
				err = es[0]
				continue
			}
		case interface{ Unwrap() error }:
			if e := u.Unwrap(); e != nil {
				if _, list := e.(interface{ Unwrap() []error }); list {
					err = e
					continue
				}
			}
		}
		return err
	}
}

// batch replaces table name with rs in one batch; probe builds the
// harmless form (see addTo) and removes the table again in a second
// batch.
func (k *kernelTable) batch(ctx context.Context, name string, rs *Ruleset, probe bool) error {
	c, err := k.conn(ctx)
	if err != nil {
		return err
	}
	t := table(name)
	c.AddTable(t)
	c.DelTable(t)
	t = c.AddTable(t)
	if err := rs.addTo(c, t, probe); err != nil {
		return err
	}
	err = c.Flush()
	if probe {
		c.AddTable(t)
		c.DelTable(t)
		if derr := c.Flush(); derr != nil && err == nil {
			err = fmt.Errorf("removing the check table: %w", derr)
		}
	}
	return err
}

// Counters implements Table.
func (k *kernelTable) Counters(ctx context.Context) (map[string]Counter, error) {
	c, err := k.conn(ctx)
	if err != nil {
		return nil, err
	}
	objs, err := c.GetObjects(table(TableName))
	if err != nil {
		return nil, fmt.Errorf("firewall: reading the counters: %w", err)
	}
	out := make(map[string]Counter, len(objs))
	for _, o := range objs {
		if co, ok := o.(*nftables.CounterObj); ok {
			out[co.Name] = Counter{Packets: co.Packets, Bytes: co.Bytes}
		}
	}
	return out, nil
}

// Remove implements Table.
func (k *kernelTable) Remove(ctx context.Context) error {
	c, err := k.conn(ctx)
	if err != nil {
		return err
	}
	t := table(TableName)
	c.AddTable(t)
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("firewall: removing table inet %s: %w", TableName, err)
	}
	return nil
}
