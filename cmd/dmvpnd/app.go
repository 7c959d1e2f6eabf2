package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/daemon"
	"github.com/opendmvpn/dmvpn/daemon/config"
	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/daemon/metrics"
	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/ipsec"
)

// node is what App needs of the daemon; *daemon.Daemon implements it.
// Tests drive App with a fake.
type node interface {
	Engine() control.Engine
	Counters() (gre.Counters, bool)
	Dataplane() (string, string)
	Reload(ctx context.Context, cfg daemon.Config) ([]string, error)
	CheckReload(ctx context.Context, cfg daemon.Config) ([]string, error)
	// ReopenLogs reopens the log files dmvpnd writes itself (the audit
	// log) after logrotate moved them.
	ReopenLogs() error
}

// daemonNode adapts *daemon.Daemon (whose Engine is typed) to node.
type daemonNode struct{ d *daemon.Daemon }

// Engine returns the engine, or a nil interface before it runs.
func (n daemonNode) Engine() control.Engine {
	if e := n.d.Engine(); e != nil {
		return e
	}
	return nil
}

// Counters reads the data plane's counters.
func (n daemonNode) Counters() (gre.Counters, bool) {
	dev := n.d.Device()
	if dev == nil {
		return gre.Counters{}, false
	}
	return dev.Counters(), true
}

// Dataplane names the backend and why it was chosen.
func (n daemonNode) Dataplane() (string, string) { return n.d.Dataplane() }

// Crypto returns the IPsec manager, or a nil interface when IPsec is off.
func (n daemonNode) Crypto() control.Crypto {
	if m := n.d.IPsec(); m != nil {
		return m
	}
	return nil
}

// Uplinks returns the uplink monitor, or a nil interface without uplinks.
func (n daemonNode) Uplinks() control.Uplinks {
	if m := n.d.Uplinks(); m != nil {
		return m
	}
	return nil
}

// BGP returns the BGP speaker, or a nil interface without BGP.
func (n daemonNode) BGP() control.Routing {
	if c := n.d.BGP(); c != nil {
		return c
	}
	return nil
}

// RefusalAuditSuppressed returns the refused-packet lines the daemon's
// limiter held back, by check.
func (n daemonNode) RefusalAuditSuppressed() map[string]uint64 { return n.d.RefusalAuditSuppressed() }

// Reload applies a configuration through the daemon.
func (n daemonNode) Reload(ctx context.Context, cfg daemon.Config) ([]string, error) {
	return n.d.Reload(ctx, cfg)
}

// ReopenLogs reopens the IPsec audit log's file.
func (n daemonNode) ReopenLogs() error {
	if m := n.d.IPsec(); m != nil {
		return m.ReopenAudit()
	}
	return nil
}

// CheckReload is the daemon's dry run of a reload.
func (n daemonNode) CheckReload(ctx context.Context, cfg daemon.Config) ([]string, error) {
	return n.d.CheckReload(ctx, cfg)
}

// App is a running dmvpnd: the configuration in force and the daemon. It
// implements control.Daemon and metrics.Source.
type App struct {
	path    string
	rt      config.Runtime
	log     *zap.Logger
	level   zap.AtomicLevel
	started time.Time
	node    node
	load    func(path string) (*config.Config, error)

	mu  sync.Mutex // serialises reloads
	cfg atomic.Pointer[config.Config]
	// fwBase is the firewall section the node started or was last
	// reloaded with: what a rollback to the daemon's own brings back.
	fwBase atomic.Pointer[config.Firewall]
}

// newApp returns the App of a node started from cfg (read from path).
func newApp(path string, cfg *config.Config, rt config.Runtime, n node, log *zap.Logger, level zap.AtomicLevel) *App {
	a := &App{path: path, rt: rt, log: log, level: level, started: time.Now(), node: n, load: config.Load}
	a.cfg.Store(cfg)
	a.fwBase.Store(cfg.Firewall)
	return a
}

// Engine implements control.Daemon.
func (a *App) Engine() control.Engine { return a.node.Engine() }

// Crypto implements control.CryptoSource.
func (a *App) Crypto() control.Crypto {
	if cs, ok := a.node.(interface{ Crypto() control.Crypto }); ok {
		return cs.Crypto()
	}
	return nil
}

// Uplinks implements control.UplinksSource.
func (a *App) Uplinks() control.Uplinks {
	if us, ok := a.node.(interface{ Uplinks() control.Uplinks }); ok {
		return us.Uplinks()
	}
	return nil
}

// BGP implements control.RoutingSource.
func (a *App) BGP() control.Routing {
	if rs, ok := a.node.(interface{ BGP() control.Routing }); ok {
		return rs.BGP()
	}
	return nil
}

// RefusalAuditSuppressed implements metrics.RefusalAuditSource (none
// from a node that does not count them).
func (a *App) RefusalAuditSuppressed() map[string]uint64 {
	if rs, ok := a.node.(metrics.RefusalAuditSource); ok {
		return rs.RefusalAuditSuppressed()
	}
	return nil
}

// MetricsEngine implements metrics.Source.
func (a *App) MetricsEngine() metrics.Engine {
	e := a.node.Engine()
	if e == nil {
		return nil
	}
	me, ok := e.(metrics.Engine)
	if !ok {
		return nil
	}
	return me
}

// Counters implements control.Daemon and metrics.Source.
func (a *App) Counters() (gre.Counters, bool) { return a.node.Counters() }

// Info implements control.Daemon.
func (a *App) Info() control.Info {
	c := a.cfg.Load()
	dp, reason := a.node.Dataplane()
	w := warnings(c)
	if cr := a.Crypto(); cr != nil {
		w = append(w, certWarnings(cr.Stats(), time.Now())...)
	}
	return control.Info{Node: c.Node, Role: c.Role, Dataplane: dp, DataplaneReason: reason, Started: a.started, ConfigFile: a.path,
		Warnings: w}
}

// certWarnings warns about this node's certificate in force when it
// expires within ipsec.ExpiryWarning, or has expired.
func certWarnings(st ipsec.Stats, now time.Time) []string {
	c := st.Certificate
	if c == nil || c.NotAfter.IsZero() {
		return nil
	}
	switch {
	case now.After(c.NotAfter):
		return []string{fmt.Sprintf("this node's certificate (%s, serial %s) expired on %s: peers refuse it", c.Subject, c.Serial, c.NotAfter.UTC().Format(time.DateOnly))}
	case c.NotAfter.Sub(now) < ipsec.ExpiryWarning:
		return []string{fmt.Sprintf("this node's certificate (%s, serial %s) expires in %s (%s)", c.Subject, c.Serial, ipsec.DaysLeft(c.NotAfter, now), c.NotAfter.UTC().Format(time.DateOnly))}
	}
	return nil
}

// WarnIPsecOff is the warning of a node that runs without IPsec.
const WarnIPsecOff = "IPsec is off (ipsec: off): NHRP and GRE travel in clear, and registrations are not bound to certificates"

// warnings are the configuration's warnings shown by show dmvpn.
func warnings(c *config.Config) []string {
	var out []string
	if c.IPsecOff {
		out = append(out, WarnIPsecOff)
	}
	switch {
	case c.FirewallOff:
		out = append(out, WarnFirewallOff)
	case c.FirewallPolicy() == nil:
		out = append(out, WarnFirewallNone)
	case c.Firewall == nil:
		out = append(out, WarnFirewallBaseline)
	}
	return out
}

// The warnings of a node without a firewall section.
const (
	// WarnFirewallOff: the file says firewall: off.
	WarnFirewallOff = "the firewall is off (firewall: off): no nftables policy guards GRE, BGP and the management ports"
	// WarnFirewallNone: no section, and no IPsec (so no baseline).
	WarnFirewallNone = "the firewall is off (no firewall section): no nftables policy guards GRE, BGP and the management ports"
	// WarnFirewallBaseline: IPsec and no section: the baseline runs.
	WarnFirewallBaseline = "no firewall section: only the baseline policy runs (GRE only under IPsec, BGP only on the tunnel); no zones guard the router"
)

// Config returns the configuration in force.
func (a *App) Config() *config.Config { return a.cfg.Load() }

// RunningConfig implements control.Daemon: the configuration in force,
// its secrets masked.
func (a *App) RunningConfig() []byte { return a.cfg.Load().MaskedYAML() }

// ErrRefused wraps every reload that changed nothing.
var ErrRefused = errors.New("reload refused, nothing changed")

// ErrPartial wraps a reload that failed part way and could not be rolled
// back whole.
var ErrPartial = errors.New("reload failed part way")

// ReloadError is a reload that was refused (or failed) with its reasons,
// one each: the file's errors with their lines, the settings that need a
// restart, the step that failed.
type ReloadError struct {
	err     error
	reasons []string
}

// Error is the summary and the reasons.
func (e *ReloadError) Error() string { return e.err.Error() }

// Unwrap gives the cause (ErrRefused or ErrPartial, and what they wrap).
func (e *ReloadError) Unwrap() error { return e.err }

// Reasons are the reasons, one line each.
func (e *ReloadError) Reasons() []string { return e.reasons }

// refused wraps err as a refused reload, its reasons drawn from it.
func refused(err error) error {
	head := ErrRefused
	if errors.Is(err, daemon.ErrRollbackFailed) {
		head = ErrPartial
	}
	var reasons []string
	var ce *config.Errors
	var re interface{ Reasons() []string }
	switch {
	case errors.As(err, &ce):
		for _, e := range ce.List {
			reasons = append(reasons, e.Error())
		}
	case errors.As(err, &re):
		reasons = re.Reasons()
	default:
		reasons = []string{err.Error()}
	}
	return &ReloadError{err: fmt.Errorf("%w: %w", head, err), reasons: reasons}
}

// Reload reads the configuration file, checks it whole and applies it
// through the daemon: parse → validate → diff → prepare → commit, all or
// nothing. An invalid file, one with changes that need a restart, or one
// whose commit fails (rolled back) changes nothing. With dryRun nothing
// is applied: it says what would change, or why the reload would be
// refused.
func (a *App) Reload(ctx context.Context, dryRun bool) ([]string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !dryRun {
		// logrotate's postrotate reloads (systemctl reload: dmvpnctl
		// reload, or SIGHUP): the audit log is reopened whatever becomes
		// of the configuration.
		if err := a.node.ReopenLogs(); err != nil {
			a.log.Error("reopening the audit log", zap.Error(err))
		}
	}
	nc, err := a.load(a.path)
	if err != nil {
		return nil, refused(err)
	}
	old := a.cfg.Load()
	var restart []string
	if nc.Logging.Format != old.Logging.Format {
		restart = append(restart, "logging.format")
	}
	if nc.Control != old.Control {
		restart = append(restart, "control")
	}
	if nc.Metrics != old.Metrics {
		restart = append(restart, "metrics")
	}
	if len(restart) > 0 {
		return nil, refused(&daemon.RestartError{Settings: restart})
	}
	apply := a.node.Reload
	if dryRun {
		apply = a.node.CheckReload
	}
	changes, err := apply(ctx, nc.Daemon(a.rt))
	if err != nil {
		return nil, refused(err)
	}
	if nc.Logging.Level != old.Logging.Level {
		if !dryRun {
			if lvl, err := zap.ParseAtomicLevel(nc.Logging.Level); err == nil {
				a.level.SetLevel(lvl.Level())
			}
		}
		changes = append(changes, fmt.Sprintf("logging level %s → %s", old.Logging.Level, nc.Logging.Level))
	}
	if !dryRun {
		for _, w := range nc.Warnings {
			a.log.Warn("configuration: "+w.Msg, zap.String("field", w.Path), zap.Int("line", w.Line))
		}
		a.cfg.Store(nc)
		a.fwBase.Store(nc.Firewall)
	}
	return changes, nil
}

// reloadAndLog is the SIGHUP path: reload and say in the log what changed
// or why nothing did.
func (a *App) reloadAndLog(ctx context.Context) {
	a.log.Info("SIGHUP: reloading the configuration", zap.String("file", a.path))
	changes, err := a.Reload(ctx, false)
	switch {
	case errors.Is(err, ErrPartial):
		a.log.Error("configuration reload failed part way and could not be rolled back whole; reload again once the cause is fixed", zap.Error(err))
	case err != nil:
		a.log.Error("configuration reload refused; the running configuration is unchanged", zap.Error(err))
	case len(changes) == 0:
		a.log.Info("configuration reloaded: nothing changed")
	default:
		a.log.Info("configuration reloaded", zap.Strings("changes", changes))
	}
}
