package failover

import (
	"context"
	"net/netip"
	"slices"
	"time"

	"go.uber.org/zap"
)

// applyRetry is how long a failed apply waits before it is tried again
// (unless a newer state comes first).
const applyRetry = time.Second

// applier applies the newest desired state, ends the connections of the
// uplinks that went down, and reports it, until ctx is done.
func (m *Monitor) applier(ctx context.Context) {
	var last *Desired
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.applyWake:
		case <-retry.C:
		}
		m.applyMu.Lock()
		req := m.applyNext
		m.applyNext = nil
		m.applyMu.Unlock()
		if req == nil {
			continue
		}
		if err := m.deps.Host.SetUplinks(ctx, req.d); err != nil {
			for _, c := range req.done {
				c <- err
			}
			req.done = nil
			if ctx.Err() != nil {
				return
			}
			m.log.Warn("applying the uplinks' routes and rules", zap.Error(err))
			m.applyMu.Lock()
			if m.applyNext == nil {
				m.applyNext = req
			} else {
				m.applyNext.downs = append(req.downs, m.applyNext.downs...)
			}
			m.applyMu.Unlock()
			retry.Reset(applyRetry)
			continue
		}
		for _, c := range req.done {
			c <- nil
		}
		d := req.d
		m.applied.Store(&d)
		m.nbma.Store(&d.NBMA)
		flushed := m.flush(ctx, req.downs, d)
		a := Applied{Time: time.Now(), Main: d.Main, Flushed: flushed, Reason: req.reason}
		if len(d.NBMA) > 0 {
			a.NBMA = d.NBMA[0]
		}
		a.Old = a.NBMA
		if last != nil {
			a.Old = netip.Addr{}
			if len(last.NBMA) > 0 {
				a.Old = last.NBMA[0]
			}
		}
		if last == nil || !slices.Equal(last.Main, d.Main) || a.Old != a.NBMA {
			m.log.Info("uplinks applied", zap.Strings("default_via", d.Main), zap.Bool("fail_open", d.FailOpen),
				zap.Stringer("nbma", a.NBMA), zap.Int("connections_ended", flushed), zap.String("reason", req.reason))
		}
		last = &d
		for _, o := range m.deps.Observers {
			o.Applied(a)
		}
	}
}

// flush ends the connections of the uplinks that went down and do not
// carry the default route now.
func (m *Monitor) flush(ctx context.Context, downs []flushTarget, d Desired) int {
	if m.deps.Conntrack == nil {
		return 0
	}
	n := 0
	done := map[flushTarget]bool{}
	for _, f := range downs {
		if slices.Contains(d.Main, f.name) || done[f] {
			continue // fail open: it carries traffic again
		}
		done[f] = true
		c, err := m.deps.Conntrack.Flush(ctx, f.addr, f.mark, m.cfg.MarkMask)
		if err != nil {
			m.log.Warn("ending the connections of a failed uplink", zap.String("uplink", f.name), zap.Error(err))
		}
		n += c
	}
	return n
}
