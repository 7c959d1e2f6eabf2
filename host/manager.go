package host

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
)

// Options configure a Manager.
type Options struct {
	// Kernel is the kernel to program; nil is this host's (NewKernel).
	Kernel Kernel
	// StateFile keeps the values that sysctls set with Restore had before
	// dmvpnd changed them, so that a run after a crash still restores
	// them; "" keeps them in memory only.
	StateFile string
	// Changed, when set, is called with each change applied to the kernel
	// ("add ipv4 221: ipproto 47 prohibit"), for the log.
	Changed func(owner, change string)
}

// Manager owns the host's kernel state for all its clients. It is safe
// for concurrent use; the changes of one Set are applied while no other
// client's are.
type Manager struct {
	k       Kernel
	changed func(owner, change string)
	apply   chan struct{} // a semaphore: one Set or Close at a time

	mu      sync.Mutex
	clients map[string]*Client
	origs   *originals
}

// New returns a Manager.
func New(opts Options) (*Manager, error) {
	k := opts.Kernel
	if k == nil {
		var err error
		if k, err = NewKernel(); err != nil {
			return nil, err
		}
	}
	origs, err := loadOriginals(opts.StateFile)
	if err != nil {
		return nil, err
	}
	return &Manager{k: k, changed: opts.Changed, apply: make(chan struct{}, 1),
		clients: map[string]*Client{}, origs: origs}, nil
}

// Client registers a client owning what o names. It fails when o
// overlaps another client's identifiers or claims the kernel's own.
func (m *Manager) Client(o Owner) (*Client, error) {
	o = Owner{Name: o.Name, RulePriorities: slices.Clone(o.RulePriorities), RouteProtocol: o.RouteProtocol,
		XfrmPriorities: slices.Clone(o.XfrmPriorities), Tables: slices.Clone(o.Tables)}
	if o.Name == "" {
		return nil, errors.New("host: a client needs a name")
	}
	var errs []error
	for _, p := range o.RulePriorities {
		if p <= 0 || p >= 32766 {
			errs = append(errs, fmt.Errorf("rule priority %d is not a client's (1-32765)", p))
		}
	}
	if o.RouteProtocol < 0 || o.RouteProtocol > 255 || (o.RouteProtocol >= 1 && o.RouteProtocol <= 4) {
		errs = append(errs, fmt.Errorf("route protocol %d is not a client's (0 or 5-255)", o.RouteProtocol))
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.clients[o.Name]; ok {
		errs = append(errs, fmt.Errorf("a client named %q exists", o.Name))
	}
	for _, c := range m.clients {
		x := c.owner
		for _, p := range o.RulePriorities {
			if slices.Contains(x.RulePriorities, p) {
				errs = append(errs, fmt.Errorf("rule priority %d is %s's", p, x.Name))
			}
		}
		if o.RouteProtocol != 0 && o.RouteProtocol == x.RouteProtocol {
			errs = append(errs, fmt.Errorf("route protocol %d is %s's", o.RouteProtocol, x.Name))
		}
		for _, p := range o.XfrmPriorities {
			if slices.Contains(x.XfrmPriorities, p) {
				errs = append(errs, fmt.Errorf("xfrm priority %d is %s's", p, x.Name))
			}
		}
		for _, t := range o.Tables {
			if slices.Contains(x.Tables, t) {
				errs = append(errs, fmt.Errorf("%v is %s's", t, x.Name))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("host: client %s: %w", o.Name, err)
	}
	c := &Client{m: m, owner: o, revs: map[TableID]string{}, sysctls: map[string]Sysctl{}}
	// What an earlier run of this client left elsewhere goes with its
	// first Set; the identifiers of both are recorded before that, so a
	// crash in between forgets neither. The newcomer's identifiers are no
	// longer another client's leftovers.
	rec := m.origs.owner(o.Name)
	c.stale, c.staleSysctls = m.staleFor(o), slices.Clone(rec.Sysctls)
	for _, x := range m.clients {
		x.stale = x.stale.without(o)
	}
	if err := m.origs.setIdentifiers(o.Name, rec.union(o)); err != nil {
		return nil, fmt.Errorf("host: client %s: %w", o.Name, err)
	}
	m.clients[o.Name] = c
	return c, nil
}

// Kernel returns the kernel the Manager programs.
func (m *Manager) Kernel() Kernel { return m.k }

// sysctlOwner returns the client other than c that sets key, if any.
func (m *Manager) sysctlOwner(c *Client, key string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, x := range m.clients {
		if _, ok := x.sysctls[key]; ok && x != c {
			return x.owner.Name
		}
	}
	return ""
}

// Client is one client's part of the host state. Its methods may be
// called from any goroutine; Set, Close and Leave of one client are
// serialised.
type Client struct {
	m     *Manager
	owner Owner

	mu      sync.Mutex
	closed  bool
	revs    map[TableID]string // nftables revisions applied
	sysctls map[string]Sysctl  // the sysctls desired now (guarded by m.mu as well for reads across clients)
	// stale are the identifiers an earlier run of this client left
	// entries at and it no longer owns, staleSysctls the keys whose
	// originals that run kept: both settled by the first Set or Close
	// that succeeds (guarded by m.mu).
	stale        Owner
	staleSysctls []string
}

// ErrClosed is returned by a Client's methods after Close or Leave.
var ErrClosed = errors.New("host: client closed")

// Owner returns what the client owns.
func (c *Client) Owner() Owner { return c.owner }

// Set makes cfg the client's desired state: it reads what the kernel has
// under the client's identifiers and applies the difference, additions
// and in-place replacements before deletions. An invalid cfg is refused
// whole and changes nothing. Every failure is in the error; when an
// addition or replacement failed, nothing is deleted.
func (c *Client) Set(ctx context.Context, cfg *Config) error {
	if cfg == nil {
		cfg = &Config{}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	if err := c.validate(cfg); err != nil {
		return fmt.Errorf("host: %s: %w", c.owner.Name, err)
	}
	if err := c.m.lock(ctx); err != nil {
		return fmt.Errorf("host: %s: %w", c.owner.Name, err)
	}
	defer c.m.unlock()
	if err := c.apply(ctx, cfg, false); err != nil {
		return fmt.Errorf("host: %s: %w", c.owner.Name, err)
	}
	return nil
}

// Close removes everything the client owns (whatever matches its
// identifiers, also what an earlier run left) and restores the sysctls
// it set with Restore, then releases the client's identifiers. On an
// error the client stays open, so Close can be tried again.
func (c *Client) Close(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	if err := c.m.lock(ctx); err != nil {
		return fmt.Errorf("host: %s: %w", c.owner.Name, err)
	}
	defer c.m.unlock()
	if err := c.apply(ctx, &Config{}, true); err != nil {
		return fmt.Errorf("host: %s: %w", c.owner.Name, err)
	}
	c.release()
	// Nothing of it is left in the kernel.
	if err := c.m.origs.setIdentifiers(c.owner.Name, record{}); err != nil {
		return fmt.Errorf("host: %s: %w", c.owner.Name, err)
	}
	return nil
}

// Leave releases the client's identifiers and leaves its state in the
// kernel, for the next run to adopt: what dmvpnd --keep-routes does with
// the protection of GRE and the shortcut rule.
func (c *Client) Leave() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		c.release()
	}
}

func (c *Client) release() {
	c.closed = true
	c.m.mu.Lock()
	delete(c.m.clients, c.owner.Name)
	c.m.mu.Unlock()
}

func (m *Manager) lock(ctx context.Context) error {
	select {
	case m.apply <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m *Manager) unlock() { <-m.apply }
