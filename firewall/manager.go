package firewall

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Manager keeps the node's policy in force, as awall's activate does: it
// applies a firewall configuration together with the node's facts in one
// atomic replace; an apply with a confirmation time stays pending until
// Confirm, and unconfirmed by then the last confirmed configuration comes
// back by itself (and the caller is told, to restore the configuration
// that produced it). It reads the rules with their counters for show
// firewall. Its methods may be called from any goroutine.
type Manager struct {
	table      Table
	log        *zap.Logger
	onRollback func(src any)

	mu    sync.Mutex
	facts Facts
	cur   *applied // in force; nil before the first apply
	// prev is what a rollback brings back while an apply is pending.
	prev     *applied
	deadline time.Time
	timer    *time.Timer
	gen      uint64
	stats    Stats
	closed   bool
}

// applied is a configuration in force.
type applied struct {
	cfg  Config
	src  any
	rs   *Ruleset
	at   time.Time
	took time.Duration
}

// Stats count what the manager did.
type Stats struct {
	Applies   uint64 `json:"applies"`
	Failures  uint64 `json:"failures"`
	Rollbacks uint64 `json:"rollbacks"`
	// LastError is the last refused apply's error.
	LastError string `json:"last_error,omitempty"`
	// LastRollback is when the last rollback was done, RollbackLate how
	// long after its deadline, RollbackTook how long its replace took in
	// the kernel (the rest of the lateness is the timer's and ours).
	LastRollback time.Time     `json:"last_rollback,omitzero"`
	RollbackLate time.Duration `json:"rollback_late_ns,omitempty"`
	RollbackTook time.Duration `json:"rollback_took_ns,omitempty"`
}

// ManagerOption adjusts a Manager.
type ManagerOption func(*Manager)

// WithRollback sets the function told, after an unconfirmed apply was
// rolled back, the source of the configuration in force again (the
// configuration file's section that produced it).
func WithRollback(fn func(src any)) ManagerOption {
	return func(m *Manager) { m.onRollback = fn }
}

// NewManager returns a manager of table for a node with facts; nothing
// is applied until Apply.
func NewManager(table Table, facts Facts, log *zap.Logger, opts ...ManagerOption) *Manager {
	if log == nil {
		log = zap.NewNop()
	}
	m := &Manager{table: table, facts: facts, log: log}
	for _, o := range opts {
		o(m)
	}
	return m
}

// ErrNothingPending is Confirm's error when no apply waits.
var ErrNothingPending = errors.New("firewall: no apply is waiting for confirmation")

// ErrClosed is returned after Close.
var ErrClosed = errors.New("firewall: manager closed")

// Result is what an apply did.
type Result struct {
	Rules int           `json:"rules"`
	Took  time.Duration `json:"took_ns"`
	// ConfirmBy is when the apply rolls back unless confirmed (zero when
	// it was applied for good).
	ConfirmBy time.Time `json:"confirm_by,omitzero"`
}

// Apply builds cfg with the node's facts and puts it in force in one
// atomic replace; src is kept with it (the caller's configuration, handed
// back on rollback). With confirm > 0 the apply is pending: unless Confirm
// is called within confirm, the last confirmed configuration comes back.
// A refused configuration changes nothing; its error names the rule.
func (m *Manager) Apply(ctx context.Context, cfg Config, src any, confirm time.Duration) (Result, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return Result{}, ErrClosed
	}
	a, err := m.put(ctx, cfg, src)
	if err != nil {
		return Result{}, err
	}
	res := Result{Rules: a.rs.Len(), Took: a.took}
	if confirm > 0 {
		if m.prev == nil {
			m.prev = m.cur // the last confirmed configuration
		}
		m.arm(confirm)
		res.ConfirmBy = m.deadline
		m.log.Info("firewall applied, waiting for confirmation", zap.Int("rules", res.Rules),
			zap.Duration("took", res.Took), zap.Time("confirm_by", res.ConfirmBy))
	} else {
		m.disarm()
		m.prev = nil
		m.log.Info("firewall applied", zap.Int("rules", res.Rules), zap.Duration("took", res.Took))
	}
	m.cur = a
	return res, nil
}

// put builds and replaces, counting; the caller holds mu.
func (m *Manager) put(ctx context.Context, cfg Config, src any) (*applied, error) {
	rs, err := Build(Policy{Config: cfg, Facts: m.facts})
	if err == nil {
		start := time.Now()
		if err = m.table.Replace(ctx, rs); err == nil {
			m.stats.Applies++
			return &applied{cfg: cfg, src: src, rs: rs, at: start, took: time.Since(start)}, nil
		}
	}
	m.stats.Failures++
	m.stats.LastError = err.Error()
	return nil, err
}

// arm starts the confirmation timer; the caller holds mu.
func (m *Manager) arm(d time.Duration) {
	m.disarm()
	m.gen++
	gen := m.gen
	m.deadline = time.Now().Add(d)
	m.timer = time.AfterFunc(d, func() { m.expire(gen) })
}

// disarm stops the confirmation timer; the caller holds mu.
func (m *Manager) disarm() {
	if m.timer != nil {
		m.timer.Stop()
		m.timer = nil
	}
	m.gen++
	m.deadline = time.Time{}
}

// Confirm keeps the pending apply for good.
func (m *Manager) Confirm() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.timer == nil {
		return ErrNothingPending
	}
	m.disarm()
	m.prev = nil
	m.log.Info("firewall confirmed")
	return nil
}

// expire rolls an unconfirmed apply back (its timer's goroutine).
func (m *Manager) expire(gen uint64) {
	m.mu.Lock()
	if gen != m.gen || m.closed || m.timer == nil {
		m.mu.Unlock()
		return
	}
	deadline := m.deadline
	m.timer = nil
	m.deadline = time.Time{}
	prev := m.prev
	m.prev = nil
	var src any
	ok := false
	start := time.Now()
	if prev == nil {
		// Nothing was in force before: the table goes.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := m.table.Remove(ctx)
		cancel()
		if err != nil {
			m.log.Error("firewall: unconfirmed apply: removing the table failed", zap.Error(err))
		} else {
			m.cur, ok = nil, true
		}
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		a, err := m.put(ctx, prev.cfg, prev.src)
		cancel()
		if err != nil {
			m.log.Error("firewall: unconfirmed apply: the previous policy could not be put back; the unconfirmed one stays", zap.Error(err))
		} else {
			m.cur, src, ok = a, prev.src, true
		}
	}
	if ok {
		m.stats.Rollbacks++
		m.stats.LastRollback = time.Now()
		m.stats.RollbackLate = m.stats.LastRollback.Sub(deadline)
		m.stats.RollbackTook = m.stats.LastRollback.Sub(start)
		m.log.Warn("firewall apply not confirmed in time: the previous policy is back",
			zap.Duration("late", m.stats.RollbackLate))
	}
	fn := m.onRollback
	m.mu.Unlock()
	if ok && fn != nil {
		fn(src)
	}
}

// SetFacts rebuilds the policy in force for new facts of the node (charon's
// TUN renamed, the tunnel's MTU changed); a pending apply stays pending
// and its rollback uses the new facts too.
func (m *Manager) SetFacts(ctx context.Context, f Facts) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	old := m.facts
	m.facts = f
	if m.cur == nil {
		return nil
	}
	a, err := m.put(ctx, m.cur.cfg, m.cur.src)
	if err != nil {
		m.facts = old
		return err
	}
	m.cur = a
	return nil
}

// Facts returns the node's facts in use.
func (m *Manager) Facts() Facts {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.facts
}

// Translate builds cfg with the node's facts without applying it.
func (m *Manager) Translate(cfg Config) (*Ruleset, error) {
	m.mu.Lock()
	f := m.facts
	m.mu.Unlock()
	return Build(Policy{Config: cfg, Facts: f})
}

// Current returns the ruleset in force and its source (nil before the
// first apply).
func (m *Manager) Current() (*Ruleset, any) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cur == nil {
		return nil, nil
	}
	return m.cur.rs, m.cur.src
}

// Stats returns the manager's counts.
func (m *Manager) Stats() Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stats
}

// Stop stops a pending confirmation and leaves the table as it is: its
// owner (host) removes it, or keeps it for the next run to adopt.
func (m *Manager) Stop() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	m.disarm()
	m.prev = nil
}

// Close stops a pending confirmation and removes the table.
func (m *Manager) Close(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed && m.cur == nil {
		return nil
	}
	m.closed = true
	m.disarm()
	m.prev, m.cur = nil, nil
	if err := m.table.Remove(ctx); err != nil {
		return fmt.Errorf("firewall: %w", err)
	}
	return nil
}
