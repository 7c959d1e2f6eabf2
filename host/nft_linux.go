//go:build linux

package host

import (
	"context"
	"fmt"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nftRcvbuf is the receive buffer of the netlink socket of a replace: the
// kernel acks every message of the batch, and the acks of a table of a
// few hundred rules overflow the default buffer (ENOBUFS, the outcome of
// the transaction unknown).
const nftRcvbuf = 16 << 20

// nftConn returns a connection whose socket has room for every ack of a
// large batch (forced past rmem_max when allowed; best effort).
func nftConn() (*nftables.Conn, error) {
	return nftables.New(nftables.WithSockOptions(func(c *netlink.Conn) error {
		if raw, err := c.SyscallConn(); err == nil {
			raw.Control(func(fd uintptr) {
				if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, nftRcvbuf) != nil {
					unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, nftRcvbuf)
				}
			})
		}
		return nil
	}))
}

func (k *linuxKernel) NFTables(ctx context.Context) ([]TableID, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c, err := nftables.New()
	if err != nil {
		return nil, err
	}
	ts, err := c.ListTables()
	if err != nil {
		return nil, err
	}
	out := make([]TableID, 0, len(ts))
	for _, t := range ts {
		out = append(out, TableID{Family: TableFamily(t.Family), Name: t.Name})
	}
	return out, nil
}

// ReplaceNFTable replaces the table in one transaction: add (so that the
// delete finds it), delete, add, the client's content, one Flush. The
// kernel applies the batch whole or not at all.
func (k *linuxKernel) ReplaceNFTable(ctx context.Context, t NFTable) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c, err := nftConn()
	if err != nil {
		return err
	}
	tab := &nftables.Table{Family: nftables.TableFamily(t.Family), Name: t.Name}
	c.AddTable(tab)
	c.DelTable(tab)
	c.AddTable(tab)
	if err := t.Build(c, tab); err != nil {
		return fmt.Errorf("building %v: %w", t.TableID, err)
	}
	return c.Flush()
}

func (k *linuxKernel) DelNFTable(ctx context.Context, id TableID) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c, err := nftables.New()
	if err != nil {
		return err
	}
	c.DelTable(&nftables.Table{Family: nftables.TableFamily(id.Family), Name: id.Name})
	return c.Flush()
}
