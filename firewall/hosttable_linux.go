//go:build linux

package firewall

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"syscall"

	"github.com/google/nftables"

	"github.com/opendmvpn/dmvpn/host"
)

// Owner is what the firewall owns in the host state (host.Manager.Client):
// its table and the scratch table a refused ruleset is checked in.
func Owner() host.Owner {
	return host.Owner{Name: "firewall", Tables: []host.TableID{
		{Family: host.TableINet, Name: TableName}, {Family: host.TableINet, Name: checkTable}}}
}

// hostTable is the Table through host, the one owner of the kernel's host
// state: the dmvpn table is the firewall client's whole nftables table,
// which host replaces in one transaction. Counters are read from the
// kernel directly (a read, not a write).
type hostTable struct {
	c    *host.Client
	read Table

	mu  sync.Mutex
	cur *Ruleset
	rev string
}

// NewHostTable returns the Table that applies the firewall through c, a
// host client registered with Owner().
func NewHostTable(c *host.Client) Table {
	return &hostTable{c: c, read: NewKernelTable()}
}

// rev identifies a ruleset's content for host (which replaces the table
// only when it changed or is missing).
func rev(rs *Ruleset) string {
	sum := sha256.Sum256([]byte(rs.Text()))
	return hex.EncodeToString(sum[:8])
}

// config is the firewall client's desired state: the ruleset in force
// and, while a refused one is examined, a check table.
func (h *hostTable) config(cur *Ruleset, curRev string, probe *Ruleset) *host.Config {
	hc := &host.Config{}
	if cur != nil {
		hc.Tables = append(hc.Tables, host.NFTable{TableID: host.TableID{Family: host.TableINet, Name: TableName}, Rev: curRev,
			Build: func(c *nftables.Conn, t *nftables.Table) error { return cur.AddTo(c, t) }})
	}
	if probe != nil {
		hc.Tables = append(hc.Tables, host.NFTable{TableID: host.TableID{Family: host.TableINet, Name: checkTable},
			Build: func(c *nftables.Conn, t *nftables.Table) error { return probe.addTo(c, t, true) }})
	}
	return hc
}

// Replace implements Table.
func (h *hostTable) Replace(ctx context.Context, rs *Ruleset) error {
	if err := rs.Validate(); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	r := rev(rs)
	err := h.c.Set(ctx, h.config(rs, r, nil))
	if err == nil {
		h.cur, h.rev = rs, r
		return nil
	}
	err = firstLeaf(err)
	switch {
	case errors.Is(err, syscall.EPERM):
		return fmt.Errorf("firewall: replacing table inet %s: %w (needs CAP_NET_ADMIN)", TableName, err)
	case errors.Is(err, syscall.ENOBUFS), errors.Is(err, host.ErrClosed), ctx.Err() != nil:
		return fmt.Errorf("firewall: replacing table inet %s: %w", TableName, err)
	}
	return refused(rs, err, func(p *Ruleset) error {
		perr := h.c.Set(ctx, h.config(h.cur, h.rev, p))
		// The check table goes again whatever the check said.
		if derr := h.c.Set(ctx, h.config(h.cur, h.rev, nil)); derr != nil && perr == nil {
			return fmt.Errorf("removing the check table: %w", derr)
		}
		return perr
	})
}

// Counters implements Table.
func (h *hostTable) Counters(ctx context.Context) (map[string]Counter, error) {
	return h.read.Counters(ctx)
}

// Remove implements Table.
func (h *hostTable) Remove(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.c.Set(ctx, &host.Config{}); err != nil {
		return fmt.Errorf("firewall: %w", err)
	}
	h.cur, h.rev = nil, ""
	return nil
}
