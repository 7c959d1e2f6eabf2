package daemon

import (
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/ipsec"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// refusalAudit is the observer that audits the NHRP packets the engine
// refuses (nhrp.EventPacketRefused): with IPsec in the audit stream, with
// the certificate of the sender's SA; without, as a warning in the log.
// One line per sender, check and reason a second at most; every refusal
// is counted by the engine (show ip nhrp traffic) all the same.
func (d *Daemon) refusalAudit(mgr *ipsec.Manager) nhrp.Observer {
	var mu sync.Mutex
	last := map[string]time.Time{}
	return nhrp.ObserverFunc(func(ev nhrp.Event) {
		if ev.Kind != nhrp.EventPacketRefused {
			return
		}
		if mgr != nil {
			mgr.AuditPacketRefusal(ev)
			return
		}
		key := ev.NBMA.String() + "|" + ev.Refusal.String() + "|" + ev.Reason
		mu.Lock()
		if len(last) > 10000 {
			last = map[string]time.Time{}
		}
		t, seen := last[key]
		ok := !seen || time.Since(t) >= time.Second
		if ok {
			last[key] = time.Now()
		}
		mu.Unlock()
		if ok {
			d.log.Warn("NHRP packet refused", zap.String("check", ev.Refusal.String()), zap.Stringer("nbma", ev.NBMA),
				zap.Stringer("claimed", ev.Proto), zap.String("reason", ev.Reason))
		}
	})
}
