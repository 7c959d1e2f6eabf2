//go:build linux

package redirect

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	nflog "github.com/florianl/go-nflog/v2"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/opendmvpn/dmvpn/host"
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

// build fills the watcher's table: a forward chain at ChainPriority with
// the rule.
func build(cfg Config) host.NFTBuilder {
	return func(c *nftables.Conn, t *nftables.Table) error {
		accept := nftables.ChainPolicyAccept
		prio := nftables.ChainPriority(ChainPriority)
		ch := c.AddChain(&nftables.Chain{Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: &prio, Policy: &accept})
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: ruleExprs(cfg)})
		return nil
	}
}

// install puts the watcher's table in force: through its owner, or
// itself — add, delete and add again in one batch, so a leftover from a
// crash is replaced.
func install(ctx context.Context, cfg Config) error {
	if cfg.Table != nil {
		return cfg.Table.Replace(ctx, build(cfg))
	}
	c, err := nftables.New()
	if err != nil {
		return err
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName(cfg.Interface)}
	c.AddTable(t)
	c.DelTable(t)
	t = c.AddTable(t)
	if err := build(cfg)(c, t); err != nil {
		return err
	}
	return c.Flush()
}

// uninstall removes the table; a missing table is not an error.
func uninstall(ctx context.Context, cfg Config) error {
	if cfg.Table != nil {
		return cfg.Table.Remove(ctx)
	}
	c, err := nftables.New()
	if err != nil {
		return err
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName(cfg.Interface)}
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
	nf, err := nflog.Open(&nflog.Config{Group: cfg.Group, Copymode: nflog.CopyPacket, Bufsize: 128,
		// Deliver each packet at once: the kernel batches NFLOG messages for up
		// to a second by default, which would delay the redirect.
		QThresh: 1, Timeout: 1})
	if err != nil {
		return nil, fmt.Errorf("redirect: NFLOG group %d: %w", cfg.Group, err)
	}
	if err := install(ctx, cfg); err != nil {
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
		uninstall(context.WithoutCancel(ctx), cfg)
		return nil, fmt.Errorf("redirect: NFLOG: %w", err)
	}
	return w, nil
}

// Close stops reading and removes the rule.
func (w *watcher) Close() error {
	w.once.Do(func() {
		w.cancel()
		errNF := w.nf.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		w.err = errors.Join(errNF, uninstall(ctx, w.cfg))
	})
	return w.err
}
