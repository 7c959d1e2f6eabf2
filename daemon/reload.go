package daemon

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"time"

	"github.com/opendmvpn/dmvpn/firewall"
	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/host"
	"github.com/opendmvpn/dmvpn/ipsec"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// Errors of a reload.
var (
	// ErrNeedsRestart is returned for changes a reload cannot apply live.
	ErrNeedsRestart = errors.New("these changes need a restart")
	// ErrReloadFailed wraps a reload that failed part way and was rolled
	// back: nothing changed.
	ErrReloadFailed = errors.New("reload failed and was rolled back")
	// ErrRollbackFailed wraps a reload that failed part way and could not
	// be rolled back whole: the node runs a mix until the next reload.
	ErrRollbackFailed = errors.New("reload failed and could not be rolled back whole")
)

// engineReconfigurer is the NHRP engine's part of a reload
// (*nhrp.Engine).
type engineReconfigurer interface {
	Reconfigure(ctx context.Context, cfg nhrp.Config) error
}

// credentialLoader is IPsec's part of a reload (*ipsec.Manager): the
// credential files read and checked first, loaded at commit, the set in
// force loaded back on rollback. What cannot be taken back (the SAs a new
// CRL revokes ended, a spoke's SAs set up again with its renewed
// certificate) waits for CredentialsCommitted, after every step
// succeeded; a set rolled back is told to CredentialsRefused, so that the
// file watch does not load it behind the reload's back.
type credentialLoader interface {
	ReadCredentials() (*ipsec.Credentials, error)
	Credentials() *ipsec.Credentials
	LoadCredentials(ctx context.Context, c *ipsec.Credentials) error
	CredentialsCommitted(ctx context.Context, old, c *ipsec.Credentials)
	CredentialsRefused(c *ipsec.Credentials)
}

// reloadPlan is a reload validated and prepared, nothing applied yet.
type reloadPlan struct {
	cfg     Config
	changes []string
	// engine says the engine's configuration changed, uplinks the
	// uplinks'.
	engine, uplinks bool
	// creds is the credential set to load (nil: unchanged), oldCreds the
	// set in force to load back on rollback.
	creds, oldCreds *ipsec.Credentials
}

// planReload validates cfg against old and prepares everything a reload
// needs, changing nothing: the configuration is checked, settings that
// need a restart refuse the whole reload, the firewall section is built
// with the node's facts (when fw, the node's firewall, is not nil), and
// the credential files are read and checked (a rotated certificate is a
// change).
func planReload(old, cfg Config, creds credentialLoader, fw *firewall.Manager) (*reloadPlan, error) {
	cfg = cfg.withDefaults()
	if err := cfg.NHRP.Validate(); err != nil {
		return nil, err
	}
	if err := cfg.checkIPsec(); err != nil {
		return nil, err
	}
	changes, restart := diff(old, cfg)
	if len(restart) > 0 {
		return nil, &RestartError{Settings: restart}
	}
	if fw != nil && cfg.Firewall != nil {
		if _, err := fw.Translate(*cfg.Firewall); err != nil {
			return nil, err
		}
	}
	if cfg.Uplinks != nil {
		if err := cfg.Uplinks.WithDefaults().Validate(); err != nil {
			return nil, err
		}
	}
	p := &reloadPlan{cfg: cfg, changes: changes, engine: !reflect.DeepEqual(old.NHRP, cfg.NHRP),
		uplinks: !reflect.DeepEqual(old.Uplinks, cfg.Uplinks)}
	if creds != nil {
		cur := creds.Credentials()
		next, err := creds.ReadCredentials()
		if err != nil {
			return nil, fmt.Errorf("ipsec credentials: %w", err)
		}
		if !next.Same(cur) {
			p.creds, p.oldCreds = next, cur
			p.changes = append(p.changes, credentialChange(cur, next))
		}
	}
	return p, nil
}

// credentialChange words a credential change.
func credentialChange(old, cur *ipsec.Credentials) string {
	o, n := old.Certificate(), cur.Certificate()
	if o.Serial == n.Serial {
		return "ipsec credentials (CA or key files) reloaded"
	}
	return fmt.Sprintf("ipsec certificate %s serial %s → %s (expires %s)", n.Subject, o.Serial, n.Serial, n.NotAfter.UTC().Format(time.DateOnly))
}

// run commits the plan's steps (runSteps) and then what only a
// committed credential set may do; a set rolled back is refused.
func (p *reloadPlan) run(ctx context.Context, steps []step, creds credentialLoader) error {
	err := runSteps(ctx, steps)
	if p.creds == nil || creds == nil {
		return err
	}
	if err != nil {
		creds.CredentialsRefused(p.creds)
		return err
	}
	creds.CredentialsCommitted(ctx, p.oldCreds, p.creds)
	return nil
}

// step is one part of a reload's commit and how to take it back.
type step struct {
	name string
	do   func(context.Context) error
	undo func(context.Context) error
}

// rollbackTimeout bounds a rollback (the reload's own context may be
// what ran out).
const rollbackTimeout = 15 * time.Second

// runSteps applies steps in order. When one fails, that step and every
// step before it are undone, last first: the result is the state before
// the reload (ErrReloadFailed), or, if an undo fails too,
// ErrRollbackFailed naming what stays applied.
func runSteps(ctx context.Context, steps []step) error {
	for i, s := range steps {
		err := s.do(ctx)
		if err == nil {
			continue
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
		defer cancel()
		var failed []error
		for j := i; j >= 0; j-- {
			if steps[j].undo == nil {
				continue
			}
			if uerr := steps[j].undo(rctx); uerr != nil {
				failed = append(failed, fmt.Errorf("undoing %s: %w", steps[j].name, uerr))
			}
		}
		if len(failed) > 0 {
			return fmt.Errorf("%w: %s: %w; %w", ErrRollbackFailed, s.name, err, errors.Join(failed...))
		}
		return fmt.Errorf("%w: %s: %w", ErrReloadFailed, s.name, err)
	}
	return nil
}

// commitSteps are the steps of a plan: the credentials first (charon may
// refuse them), then the engine. old is the engine configuration in force.
func (p *reloadPlan) commitSteps(old nhrp.Config, eng engineReconfigurer, creds credentialLoader) []step {
	var steps []step
	if p.creds != nil && creds != nil {
		steps = append(steps, step{
			name: "loading the credentials into charon",
			do:   func(ctx context.Context) error { return creds.LoadCredentials(ctx, p.creds) },
			undo: func(ctx context.Context) error {
				if p.oldCreds == nil {
					return nil
				}
				return creds.LoadCredentials(ctx, p.oldCreds)
			},
		})
	}
	if p.engine {
		steps = append(steps, step{
			name: "reconfiguring the NHRP engine",
			do:   func(ctx context.Context) error { return eng.Reconfigure(ctx, p.cfg.NHRP) },
			undo: func(ctx context.Context) error { return eng.Reconfigure(ctx, old) },
		})
	}
	return steps
}

// hostSetter is the daemon's part of the host state (*host.Client).
type hostSetter interface {
	Set(ctx context.Context, cfg *host.Config) error
}

// hostStep is the step that sets the daemon's part of the host state
// again when the reload changes it (forwarding; on a hub whose neighbours
// are the kernel's, the neighbour table's limits from limits.max_entries
// and the timers from shortcut_idle), nil when it does not. It is the
// last step: its undo cannot take everything back (forwarding turned on
// stays on, the limits are only ever raised), so no step may fail after
// it.
func hostStep(hc hostSetter, info gre.Info, old, cfg Config) *step {
	was, now := hostState(old, info), hostState(cfg, info)
	if reflect.DeepEqual(was, now) {
		return nil
	}
	return &step{
		name: "setting forwarding and the neighbour table's limits",
		do:   func(ctx context.Context) error { return hc.Set(ctx, now) },
		undo: func(ctx context.Context) error { return hc.Set(ctx, was) },
	}
}

// RestartError is a reload refused because of settings that need a
// restart; it wraps ErrNeedsRestart.
type RestartError struct{ Settings []string }

// Error lists the settings.
func (e *RestartError) Error() string { return fmt.Sprintf("%v: %v", ErrNeedsRestart, e.Settings) }

// Unwrap makes errors.Is(err, ErrNeedsRestart) true.
func (e *RestartError) Unwrap() error { return ErrNeedsRestart }

// Reasons are the settings that need a restart, one each.
func (e *RestartError) Reasons() []string {
	out := make([]string, len(e.Settings))
	for i, s := range e.Settings {
		out[i] = s + ": needs a restart"
	}
	return out
}

// Reload applies a new configuration, all or nothing: everything is
// validated and prepared first (the configuration, the settings that
// would need a restart, the credential files), then committed — the
// firewall, the uplinks (routes, rules and probing), the credentials into
// charon, the engine's configuration, the networks and the registration
// policy — and what was committed is rolled back when a later step fails.
// It returns what changed.
func (d *Daemon) Reload(ctx context.Context, cfg Config) ([]string, error) {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	old, eng, creds, p, err := d.plan(cfg)
	if err != nil {
		return nil, err
	}
	if len(p.changes) == 0 {
		return nil, nil
	}
	steps := p.commitSteps(old.NHRP, eng, creds)
	if mon := d.Uplinks(); mon != nil && p.uplinks {
		// The uplinks' routes and rules before the engine: it takes its
		// NBMA addresses from them.
		steps = append([]step{{
			name: "reconfiguring the uplinks",
			do:   func(ctx context.Context) error { return mon.Reconfigure(ctx, *p.cfg.Uplinks) },
			undo: func(ctx context.Context) error { return mon.Reconfigure(ctx, *old.Uplinks) },
		}}, steps...)
	}
	d.mu.Lock()
	hc, info := d.hostc, d.hostInfo
	d.mu.Unlock()
	if hc != nil {
		// The host state last: forwarding once on is not turned off
		// again (not on stop either), so nothing after it may fail.
		if hs := hostStep(hc, info, old, p.cfg); hs != nil {
			steps = append(steps, *hs)
		}
	}
	if fw := d.firewallStep(old, p.cfg); fw != nil {
		// The firewall first: the kernel may refuse its rules.
		steps = append([]step{*fw}, steps...)
	}
	if err := p.run(ctx, steps, creds); err != nil {
		return nil, err
	}
	d.router.setNetworks(p.cfg.Networks)
	d.router.setUplinks(p.cfg.Uplinks)
	pol := p.cfg.Policy
	d.policy.Store(&pol)
	d.mu.Lock()
	d.cfg = p.cfg
	d.mu.Unlock()
	return p.changes, nil
}

// CheckReload is a dry run of Reload: what a reload to cfg would change,
// or why it would be refused. Nothing is applied.
func (d *Daemon) CheckReload(ctx context.Context, cfg Config) ([]string, error) {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	_, _, _, p, err := d.plan(cfg)
	if err != nil {
		return nil, err
	}
	return p.changes, nil
}

// plan validates and prepares a reload to cfg against the configuration
// in force (the caller holds reloadMu), the firewall section built with
// the node's facts too: what a reload would do, or why it is refused.
func (d *Daemon) plan(cfg Config) (Config, *nhrp.Engine, credentialLoader, *reloadPlan, error) {
	d.mu.Lock()
	old, eng, mgr, fw := d.cfg, d.eng, d.ipsecMgr, d.fw
	d.mu.Unlock()
	if eng == nil {
		return old, nil, nil, nil, errors.New("daemon not running")
	}
	var creds credentialLoader
	if mgr != nil {
		creds = mgr
	}
	p, err := planReload(old, cfg, creds, fw)
	if err != nil {
		return old, nil, nil, nil, err
	}
	return old, eng, creds, p, nil
}
