//go:build linux

package redirect

import (
	"context"
	"errors"
	"fmt"
	"sync"

	nflog "github.com/florianl/go-nflog/v2"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

func ifname(n string) []byte {
	b := make([]byte, 16)
	copy(b, n)
	return b
}

// ruleExprs is `iifname T oifname T limit rate R/second burst R log group G
// snaplen 128`.
func ruleExprs(cfg Config) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(cfg.Interface)},
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(cfg.Interface)},
		&expr.Limit{Type: expr.LimitTypePkts, Rate: cfg.Rate, Unit: expr.LimitTimeSecond, Burst: uint32(cfg.Rate)},
		&expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_SNAPLEN, Group: cfg.Group, Snaplen: 128},
	}
}

// install replaces the watcher's table atomically: add, delete and add
// again in one batch, so a leftover from a crash is replaced.
func install(c *nftables.Conn, cfg Config) error {
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName(cfg.Interface)}
	c.AddTable(t)
	c.DelTable(t)
	t = c.AddTable(t)
	accept := nftables.ChainPolicyAccept
	prio := nftables.ChainPriority(ChainPriority)
	ch := c.AddChain(&nftables.Chain{Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: &prio, Policy: &accept})
	c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: ruleExprs(cfg)})
	return c.Flush()
}

// uninstall removes the table; a missing table is not an error.
func uninstall(c *nftables.Conn, iface string) error {
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName(iface)}
	c.AddTable(t)
	c.DelTable(t)
	return c.Flush()
}

type watcher struct {
	cfg    Config
	nf     *nflog.Nflog
	cancel context.CancelFunc
	once   sync.Once
	err    error
}

func start(ctx context.Context, cfg Config, fn func([]byte)) (Watcher, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("redirect: nftables: %w", err)
	}
	nf, err := nflog.Open(&nflog.Config{Group: cfg.Group, Copymode: nflog.CopyPacket, Bufsize: 128,
		// Deliver each packet at once: the kernel batches NFLOG messages for up
		// to a second by default, which would delay the redirect.
		QThresh: 1, Timeout: 1})
	if err != nil {
		return nil, fmt.Errorf("redirect: NFLOG group %d: %w", cfg.Group, err)
	}
	if err := install(c, cfg); err != nil {
		nf.Close()
		return nil, fmt.Errorf("redirect: installing the nftables rule: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	w := &watcher{cfg: cfg, nf: nf, cancel: cancel}
	hook := func(a nflog.Attribute) int {
		if a.Payload != nil {
			fn(*a.Payload)
		}
		return 0
	}
	errFn := func(err error) int {
		if ctx.Err() != nil || errors.Is(err, context.Canceled) {
			return 1
		}
		return 0 // keep reading: a full socket buffer only loses reports
	}
	if err := nf.RegisterWithErrorFunc(ctx, hook, errFn); err != nil {
		cancel()
		nf.Close()
		uninstall(c, cfg.Interface)
		return nil, fmt.Errorf("redirect: NFLOG: %w", err)
	}
	return w, nil
}

// Close stops reading and removes the rule.
func (w *watcher) Close() error {
	w.once.Do(func() {
		w.cancel()
		errNF := w.nf.Close()
		var errT error
		if c, err := nftables.New(); err != nil {
			errT = err
		} else {
			errT = uninstall(c, w.cfg.Interface)
		}
		w.err = errors.Join(errNF, errT)
	})
	return w.err
}
