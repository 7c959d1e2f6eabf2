// Package daemon is dmvpnd as a library: it wires the data plane, the
// NHRP engine, route lookups, redirect detection and the kernel settings
// of a node together from one Config, runs them, reloads them and stops
// them cleanly. The command, the control socket and the tests all drive
// the same Daemon.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/bgp"
	"github.com/opendmvpn/dmvpn/failover"
	"github.com/opendmvpn/dmvpn/firewall"
	"github.com/opendmvpn/dmvpn/firewall/redirect"
	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/gre/backend"
	"github.com/opendmvpn/dmvpn/host"
	"github.com/opendmvpn/dmvpn/internal/auditlimit"
	"github.com/opendmvpn/dmvpn/ipsec"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// Defaults.
const (
	DefaultRedirectGroup        = 1
	DefaultShortcutRulePriority = 1000
)

// Config is a node's configuration as the daemon uses it. The YAML file
// is parsed and validated into it.
type Config struct {
	// Node names the node (the shell's prompt, logs).
	Node string
	// Tunnel is the tunnel interface.
	Tunnel gre.Config
	// Dataplane selects the backend: auto, kernel, ebpf or userspace.
	Dataplane backend.Kind
	// NHRP configures the engine.
	NHRP nhrp.Config
	// Networks lists the networks behind this node it answers resolutions
	// for; empty means: the kernel's routes that are not through the
	// tunnel and not through an uplink.
	Networks []netip.Prefix
	// Policy decides on registrations (hubs).
	Policy Policy
	// RedirectGroup is the NFLOG group of the hub's redirect rule.
	RedirectGroup uint16
	// ShortcutRulePriority is the priority of the policy rule that makes
	// the shortcut table take precedence over the main table.
	ShortcutRulePriority int
	// Forwarding turns on IP forwarding (a DMVPN node routes).
	Forwarding bool
	// IPsec protects the tunnel with strongSwan. Without it IPsecOff must
	// be set (the file's `ipsec: off`): NHRP and GRE then run in clear.
	// New refuses a Config with neither, so that no node runs in clear by
	// omission.
	IPsec    *ipsec.Config
	IPsecOff bool
	// Firewall is the nftables policy (the firewall section, or the
	// baseline of a node with IPsec and no section); nil runs without it. ManagementPorts are the TCP ports of the control API
	// and metrics beyond loopback, never accepted from the internet.
	Firewall        *firewall.Config
	ManagementPorts []uint16
	// Uplinks fails over and balances the ISP uplinks; nil: the kernel's
	// routes are left as they are.
	Uplinks *failover.Config
	// BGP runs the embedded speaker (nil: none); its routes carry
	// BGPProtocol in the kernel.
	BGP         *bgp.Config
	BGPProtocol int
	// HostStateFile keeps, across a crash, what the host state's owner
	// must put back (sysctls' values from before, routes replaced) and
	// the identifiers each part of dmvpnd owns, so that the next start
	// removes what sits at identifiers no longer used (host.Options
	// StateFile); "" keeps it in memory only.
	HostStateFile string
	// StateFile keeps the NHRP engine's registrations, bindings and
	// shortcuts across a restart or a crash; "" keeps nothing.
	StateFile string
}

// Policy is the registration policy of a hub: every client in the tunnel
// network (AllowAll), or only the tunnel addresses in Allow; an empty
// Allow is the tunnel network. A CIE outside the tunnel network is
// refused either way. A prefix registration (more than one address) is
// refused unless Prefixes: a prefix's owner would be taken for the owner of
// every unregistered tunnel address in it (the source check of Resolution
// Requests, the responder check of replies through the hub). With IPsec
// the certificate check refuses them anyway.
type Policy struct {
	AllowAll bool
	Allow    []netip.Prefix
	Prefixes bool
}

// withDefaults fills the defaults of zero fields.
func (c Config) withDefaults() Config {
	if c.RedirectGroup == 0 {
		c.RedirectGroup = DefaultRedirectGroup
	}
	if c.ShortcutRulePriority == 0 {
		c.ShortcutRulePriority = DefaultShortcutRulePriority
	}
	if c.Dataplane == "" {
		c.Dataplane = backend.Auto
	}
	return c
}

// ErrNoIPsec is returned for a Config without IPsec that does not say it
// runs in clear on purpose.
var ErrNoIPsec = errors.New("no IPsec configured: configure it, or say ipsec: off to run NHRP and GRE in clear")

// checkIPsec refuses a node in clear by omission, and one that says both.
func (c Config) checkIPsec() error {
	switch {
	case c.IPsec == nil && !c.IPsecOff:
		return ErrNoIPsec
	case c.IPsec != nil && c.IPsecOff:
		return errors.New("IPsec configured and off at once")
	}
	return nil
}

// Daemon runs a node.
type Daemon struct {
	log   *zap.Logger
	ready chan struct{}

	reloadMu sync.Mutex // serialises reloads
	mu       sync.Mutex
	cfg      Config
	dev      gre.Device
	reason   string
	eng      *nhrp.Engine
	router   *kernelRouter
	stopFn   []func() error // undo actions, run in reverse order on stop
	// host owns the kernel state beside the tunnel; hostClients (the
	// daemon's, IPsec's) are closed after stopFn, or left with KeepState.
	host        *host.Manager
	hostClients []*host.Client
	// hostc is the daemon's own host client and hostInfo the tunnel it
	// was set for: a reload sets the daemon's part again with them
	// (forwarding, the neighbour table's limits and timers).
	hostc    *host.Client
	hostInfo gre.Info
	engCtx   context.CancelFunc
	engErr   chan error
	obs      []nhrp.Observer
	policy   atomic.Pointer[Policy]

	ipsecMgr *ipsec.Manager
	// fw is the firewall (nil without a firewall section); fwRollback is
	// told of its rollbacks.
	fw         *firewall.Manager
	fwRollback func(src any)
	uplinks    *failover.Monitor // nil without uplinks
	follower   *follower         // makes IPsec and NHRP follow the uplinks; nil without them
	bgp        *bgp.Controller
	// refusals limits the lines written for refused NHRP packets
	// (audit.go); made on first use.
	refusals *auditlimit.Limiter
}

// Option adjusts a Daemon.
type Option func(*Daemon)

// WithObserver adds an observer of the engine's events (metrics).
func WithObserver(o nhrp.Observer) Option { return func(d *Daemon) { d.obs = append(d.obs, o) } }

// New returns a daemon for cfg. Run starts it.
func New(cfg Config, log *zap.Logger, opts ...Option) (*Daemon, error) {
	if log == nil {
		log = zap.NewNop()
	}
	cfg = cfg.withDefaults()
	if err := cfg.Tunnel.Validate(); err != nil {
		return nil, err
	}
	if err := cfg.NHRP.Validate(); err != nil {
		return nil, err
	}
	if err := cfg.checkIPsec(); err != nil {
		return nil, err
	}
	d := &Daemon{log: log, cfg: cfg, ready: make(chan struct{})}
	for _, o := range opts {
		o(d)
	}
	return d, nil
}

// Ready is closed once the node runs.
func (d *Daemon) Ready() <-chan struct{} { return d.ready }

// Engine returns the NHRP engine (nil before Ready).
func (d *Daemon) Engine() *nhrp.Engine {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.eng
}

// Device returns the data plane (nil before Ready).
func (d *Daemon) Device() gre.Device {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.dev
}

// Dataplane returns the backend in use and why it was chosen.
func (d *Daemon) Dataplane() (string, string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dev == nil {
		return "", ""
	}
	return d.dev.Info().Backend, d.reason
}

// Host returns the owner of the host's kernel state (nil before Ready):
// the packages that set routes, rules, sysctls or tables get their
// Client from it.
func (d *Daemon) Host() *host.Manager {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.host
}

// hostManager returns the owner of host state, starting it (the uplinks
// need it before the tunnel opens).
func (d *Daemon) hostManager() (*host.Manager, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.host == nil {
		m, err := host.New(host.Options{StateFile: d.cfg.HostStateFile, Changed: func(owner, change string) {
			d.log.Info("host: "+change, zap.String("owner", owner))
		}})
		if err != nil {
			return nil, err
		}
		d.host = m
	}
	return d.host, nil
}

// setHost starts the host state's owner and sets the daemon's own part.
func (d *Daemon) setHost(ctx context.Context, cfg Config, info gre.Info) error {
	m, err := d.hostManager()
	if err != nil {
		return err
	}
	c, err := m.Client(hostOwner(cfg))
	if err != nil {
		return err
	}
	d.hostClients = append(d.hostClients, c)
	if err := c.Set(ctx, hostState(cfg, info)); err != nil {
		return err
	}
	d.mu.Lock()
	d.hostc, d.hostInfo = c, info
	d.mu.Unlock()
	if cfg.NHRP.Role == nhrp.RoleHub && info.Caps.KernelNeighbors {
		fam := "ipv4"
		if !info.Prefix.Addr().Is4() {
			fam = "ipv6"
		}
		if !neighLimitsExist(m.Kernel(), fam) {
			d.log.Info("the neighbour table limits (gc_thresh1-3) exist in the initial network namespace only: set them there for a hub of more than about 1000 spokes",
				zap.String("family", fam))
		}
	}
	return nil
}

// Config returns the configuration in force.
func (d *Daemon) Config() Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg
}

// Run brings the node up, runs it until ctx is done, then takes it down
// in reverse order: engine (purges, kernel entries), redirect rule,
// IPsec, data plane, and last the host state (the shortcut rule and the
// protection of GRE; left in place with Tunnel.KeepState).
func (d *Daemon) Run(ctx context.Context) error {
	if err := d.up(ctx); err != nil {
		d.down()
		return err
	}
	close(d.ready)
	var err error
	select {
	case <-ctx.Done():
	case err = <-d.engErr:
		if err != nil {
			err = fmt.Errorf("NHRP engine: %w", err)
		}
	}
	return errors.Join(err, d.down())
}

// up opens the data plane and starts everything on it.
func (d *Daemon) up(ctx context.Context) error {
	cfg := d.cfg
	gate := &ingressGate{}
	if cfg.IPsec != nil {
		gate.filter = ipsec.NewIngressFilter()
		d.stopFn = append(d.stopFn, func() error { gate.filter.Close(); return nil })
		cfg.Tunnel.AcceptIngress = gate.accept
	}
	// The uplinks first: the tunnel's underlay routes through them.
	if err := d.startUplinks(ctx, cfg); err != nil {
		return err
	}
	dev, reason, err := backend.Open(cfg.Tunnel, cfg.Dataplane)
	if err != nil {
		return fmt.Errorf("opening the tunnel %s: %w", cfg.Tunnel.Name, err)
	}
	d.log.Info(reason, zap.String("interface", cfg.Tunnel.Name))
	d.mu.Lock()
	d.dev, d.reason = dev, reason
	d.mu.Unlock()
	d.stopFn = append(d.stopFn, dev.Close)

	if err := d.setHost(ctx, cfg, dev.Info()); err != nil {
		return err
	}
	if err := d.startFirewall(ctx, cfg, dev.Info()); err != nil {
		return err
	}
	router, err := newKernelRouter(ctx, dev.Info(), cfg)
	if err != nil {
		return err
	}
	d.router = router

	var mgr *ipsec.Manager
	if cfg.IPsec != nil {
		if mgr, err = d.startIPsec(ctx, cfg, dev, gate); err != nil {
			return err
		}
		d.mu.Lock()
		d.ipsecMgr = mgr
		f := d.follower
		d.mu.Unlock()
		if f != nil {
			f.pin() // an NBMA move during the start: IPsec follows it now
		}
		if err := d.refreshFirewall(ctx, 5*time.Second); err != nil {
			return err
		}
	} else {
		d.log.Warn("ipsec: off: NHRP and GRE run in clear")
	}

	deps := nhrp.Deps{Tunnel: dev, Router: router, Logger: d.log.Named("nhrp"),
		Observers: append(slices.Clone(d.obs), d.refusalAudit(mgr))}
	stopReport := make(chan struct{})
	reported := make(chan struct{})
	go func() { defer close(reported); d.reportRefusals(mgr, auditlimit.DefaultSummary, stopReport) }()
	d.stopFn = append(d.stopFn, func() error { close(stopReport); <-reported; return nil })
	if mon := d.Uplinks(); mon != nil {
		deps.Tunnel = uplinkTunnel{Device: dev, mon: mon}
	}
	var bgpc *bgp.Controller
	if cfg.BGP != nil {
		if bgpc, err = d.newBGP(cfg, dev.Info()); err != nil {
			return fmt.Errorf("bgp: %w", err)
		}
		deps.Observers = append(deps.Observers, bgpc)
	}
	var sf *stateFile
	if cfg.StateFile != "" {
		sf = newStateFile(cfg.StateFile)
		deps.State = sf
	}
	if cfg.NHRP.Role == nhrp.RoleHub {
		p := cfg.Policy
		d.policy.Store(&p)
		var audit func(nhrp.Registration, string)
		if mgr != nil {
			audit = func(r nhrp.Registration, reason string) { mgr.AuditRefusal(r, "policy", reason) }
		}
		policy := policyAuthorizer(cfg.Tunnel.Prefix, &d.policy, audit)
		deps.Authorizer = policy
		if mgr != nil {
			deps.Authorizer = bothAuthorizers(policy, mgr)
		}
	}
	if mgr != nil {
		deps.Peers = mgr
		deps.Verifier = mgr
	}
	eng, err := nhrp.New(cfg.NHRP, deps)
	if err != nil {
		return err
	}
	engCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	d.engErr = make(chan error, 1)
	go func() {
		err := eng.Run(engCtx)
		if sf != nil {
			sf.close() // the engine's saver has ended with Run
		}
		d.engErr <- err
	}()
	d.mu.Lock()
	d.eng, d.engCtx = eng, cancel
	d.mu.Unlock()
	if bgpc != nil {
		d.runBGP(ctx, bgpc)
	}

	if cfg.NHRP.Role == nhrp.RoleHub && cfg.NHRP.Redirect {
		// The rule's table is host state: its own client puts it in the
		// kernel (and removes it last, with the others).
		rc, err := d.host.Client(host.Owner{Name: "redirect", Tables: []host.TableID{{Family: host.TableINet, Name: redirect.TableName(cfg.Tunnel.Name)}}})
		if err != nil {
			return err
		}
		d.hostClients = append(d.hostClients, rc)
		w, err := startRedirect(ctx, cfg, eng, redirectTable{c: rc, id: host.TableID{Family: host.TableINet, Name: redirect.TableName(cfg.Tunnel.Name)}})
		if err != nil {
			return err
		}
		d.stopFn = append(d.stopFn, w.Close)
	}
	// Every part with host state has its client now: what an earlier run
	// of a part this configuration no longer has (uplinks, IPsec, the
	// firewall, the redirect rule) left in the kernel goes.
	if err := d.host.Sweep(ctx); err != nil {
		d.log.Warn("host: removing what an earlier run left", zap.Error(err))
	}
	return nil
}

// down stops what up started, in reverse order.
func (d *Daemon) down() error {
	var errs []error
	d.mu.Lock()
	eng, cancel := d.eng, d.engCtx
	d.mu.Unlock()
	if eng != nil {
		cancel()
		select {
		case <-eng.Done():
		case <-time.After(10 * time.Second):
			errs = append(errs, errors.New("NHRP engine did not stop in time"))
		}
	}
	for i := len(d.stopFn) - 1; i >= 0; i-- {
		if err := d.stopFn[i](); err != nil && !errors.Is(err, gre.ErrClosed) {
			errs = append(errs, err)
		}
	}
	d.stopFn = nil
	if d.router != nil {
		errs = append(errs, d.router.close())
	}
	// The host state goes last, once the tunnel is closed: GRE is never
	// without its protection while the device can send. With KeepState
	// (--keep-routes) the tunnel stays, and so does the protection, for
	// the next start to adopt.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	keep := d.Config().Tunnel.KeepState
	for i := len(d.hostClients) - 1; i >= 0; i-- {
		if keep {
			d.hostClients[i].Leave()
		} else if err := d.hostClients[i].Close(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	d.hostClients = nil
	return errors.Join(errs...)
}
