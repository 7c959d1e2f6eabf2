package failover

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.uber.org/zap"
)

// ErrRollback wraps a reconfiguration that failed and whose rollback
// failed too: the monitor runs the old configuration, and the kernel gets
// its state on the applier's next try.
var ErrRollback = errors.New("failover: reconfiguration failed and its rollback did not apply")

// Reconfigure puts a new configuration in force while the monitor runs,
// all or nothing: it returns once the kernel carries the state the new
// configuration gives, or, when the host-state owner refuses that state,
// after the old configuration and its state are back (the error says
// why). Uplinks are matched by name and interface: one kept keeps its
// state, its probing history (of the probe hosts it keeps) and its
// prober; one added starts down and comes up after RepliesRequired good
// rounds (pingu's hosts start online, but an uplink added to a running
// node has not carried traffic yet); the connections of one removed are
// ended. RulePriority, Protocol and MarkMask name what the uplinks own in
// the kernel: changing them is refused (a restart changes them).
func (m *Monitor) Reconfigure(ctx context.Context, cfg Config) error {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	cur := m.Config()
	if cfg.RulePriority != cur.RulePriority || cfg.Protocol != cur.Protocol || cfg.MarkMask != cur.MarkMask {
		return fmt.Errorf("%w: the rule priority, route protocol and mark mask of the uplinks cannot change while they run", ErrConfig)
	}
	var err error
	if derr := m.do(ctx, func() { err = m.reconfigure(ctx, cfg) }); derr != nil {
		return derr
	}
	return err
}

// reconfigure runs on the loop: it holds the loop until the applier has
// applied the new state (or the old one again), so no state of either
// configuration mixes with the other's.
func (m *Monitor) reconfigure(ctx context.Context, cfg Config) error {
	now := time.Now()
	oldCfg, oldUps := m.cfg, m.ups
	var ups, added, removed []*uplink
	kept := map[*uplink]bool{}
	for _, c := range cfg.Uplinks {
		i := slices.IndexFunc(oldUps, func(u *uplink) bool { return u.p.cfg.Name == c.Name && u.p.cfg.Interface == c.Interface })
		if i < 0 {
			u := &uplink{p: newProber(c, now)}
			u.p.state = StateDown
			u.p.reason = fmt.Sprintf("added by a reload: up after %d rounds in a row with replies", c.RepliesRequired)
			ups, added = append(ups, u), append(added, u)
			continue
		}
		o := oldUps[i]
		kept[o] = true
		u := *o // the prober (socket) is shared: the old uplink is not closed
		u.p = o.p.reconfigured(c, now)
		u.gateway = gatewayOf(c, u.link, o.gateway)
		ups = append(ups, &u)
	}
	for _, o := range oldUps {
		if !kept[o] {
			removed = append(removed, o)
		}
	}
	m.setConfig(cfg, ups)
	for _, u := range added {
		m.refresh(ctx, u, now)
	}
	err := m.applyNow("reconfigured")
	if err == nil {
		for _, o := range removed {
			o.closeProbe()
			if o.link.Addr.IsValid() {
				m.downs = append(m.downs, flushTarget{name: o.p.cfg.Name, addr: o.link.Addr.Addr(), mark: o.p.cfg.Mark})
			}
		}
		m.publish("uplinks removed by a reload")
		var names []string
		for _, u := range added {
			names = append(names, u.p.cfg.Name)
		}
		var gone []string
		for _, o := range removed {
			gone = append(gone, o.p.cfg.Name)
		}
		m.log.Info("uplinks reconfigured", zap.Strings("added", names), zap.Strings("removed", gone), zap.Int("uplinks", len(ups)))
		return nil
	}
	for _, u := range added {
		u.closeProbe()
	}
	m.setConfig(oldCfg, oldUps)
	if rerr := m.applyNow("reconfiguration rolled back"); rerr != nil {
		return fmt.Errorf("%w: %w (rollback: %w)", ErrRollback, err, rerr)
	}
	return fmt.Errorf("failover: the new uplinks' routes and rules: %w", err)
}

// setConfig makes cfg and ups the loop's configuration.
func (m *Monitor) setConfig(cfg Config, ups []*uplink) {
	m.cfg, m.ups = cfg, ups
	m.cfgNow.Store(&cfg)
}

// applyNow hands the desired state to the applier and waits for its
// result.
func (m *Monitor) applyNow(reason string) error {
	done := make(chan error, 1)
	m.post(reason, done)
	select {
	case err := <-done:
		return err
	case <-m.applierDone:
		return ErrStopped
	}
}

// reconfigured returns a copy of the prober under a new configuration of
// the same uplink: the probe hosts it keeps keep their history; a round
// in flight when the hosts changed is dropped undecided (its new hosts
// were not asked), and the next round comes no later than a new interval.
func (p *prober) reconfigured(cfg Uplink, now time.Time) *prober {
	q := *p
	q.cfg = cfg
	q.hosts = nil
	for _, a := range cfg.Probes {
		h := &hostState{addr: a}
		if i := slices.IndexFunc(p.hosts, func(h *hostState) bool { return h.addr == a }); i >= 0 {
			*h = *p.hosts[i]
		}
		q.hosts = append(q.hosts, h)
	}
	q.open = nil
	for _, r := range p.open {
		c := *r
		c.answered, c.tries = slices.Clone(r.answered), slices.Clone(r.tries)
		q.open = append(q.open, &c)
	}
	if len(q.open) > 0 && !slices.Equal(p.cfg.Probes, cfg.Probes) {
		q.open = nil
		q.nextRound = now
	}
	if q.nextRound.After(now.Add(cfg.Interval)) {
		q.nextRound = now.Add(cfg.Interval)
	}
	return &q
}
