package daemon

import (
	"time"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/internal/auditlimit"
	"github.com/opendmvpn/dmvpn/ipsec"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// refusalAudit is the observer that audits the NHRP packets the engine
// refuses (nhrp.EventPacketRefused): with IPsec in the audit stream, with
// the certificate of the sender's SA; without, as a warning in the log.
// The daemon's refusal limiter (auditlimit, its defaults: 10 lines a
// second with a burst of 20, one line per sender and check a second)
// decides which get a line, before any work is done for it; the lines it
// holds back are counted by check and summed up in one line every 10 s
// (reportRefusals). Every refusal is counted by the engine (show ip nhrp
// traffic) all the same.
func (d *Daemon) refusalAudit(mgr *ipsec.Manager) nhrp.Observer {
	lim := d.refusalLimiter()
	return nhrp.ObserverFunc(func(ev nhrp.Event) {
		if ev.Kind != nhrp.EventPacketRefused {
			return
		}
		if lim.Allow(ev.NBMA, ev.Refusal.String()) {
			if mgr != nil {
				mgr.AuditPacketRefusal(ev)
			} else {
				d.log.Warn("NHRP packet refused", zap.String("check", ev.Refusal.String()), zap.Stringer("nbma", ev.NBMA),
					zap.Stringer("claimed", ev.Proto), zap.String("reason", ev.Reason))
			}
		}
		if s, ok := lim.Due(); ok {
			d.logSuppressed(mgr, s)
		}
	})
}

// refusalLimiter returns the daemon's refusal limiter, made on first use.
func (d *Daemon) refusalLimiter() *auditlimit.Limiter {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.refusals == nil {
		d.refusals = auditlimit.New(auditlimit.Config{})
	}
	return d.refusals
}

// reportRefusals writes the summary of the suppressed refusal lines every
// interval while refusals stop coming (the observer writes it while they
// come), and what is left when stop is closed.
func (d *Daemon) reportRefusals(mgr *ipsec.Manager, interval time.Duration, stop <-chan struct{}) {
	lim := d.refusalLimiter()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			if s, ok := lim.Due(); ok {
				d.logSuppressed(mgr, s)
			}
		case <-stop:
			if s, ok := lim.Flush(); ok {
				d.logSuppressed(mgr, s)
			}
			return
		}
	}
}

// logSuppressed writes one summary of suppressed refusal lines where the
// lines would have gone.
func (d *Daemon) logSuppressed(mgr *ipsec.Manager, s auditlimit.Summary) {
	if mgr != nil {
		mgr.AuditRefusalsSuppressed(s)
		return
	}
	d.log.Warn(s.String(), zap.Uint64("suppressed", s.Total), zap.Duration("over", s.Over), zap.Any("by_check", s.ByCheck))
}

// RefusalAuditSuppressed returns the refusal lines (log or audit stream)
// the limiter held back since the start, by check (the metric
// dmvpn_nhrp_refusal_audit_suppressed_total).
func (d *Daemon) RefusalAuditSuppressed() map[string]uint64 {
	return d.refusalLimiter().Suppressed()
}
