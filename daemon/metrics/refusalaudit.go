package metrics

import "github.com/prometheus/client_golang/prometheus"

// RefusalAuditSource is a Source that also gives the refused-packet lines
// its limiter held back (dmvpnd's, from daemon.Daemon's
// RefusalAuditSuppressed); without it the family is not exported.
type RefusalAuditSource interface {
	RefusalAuditSuppressed() map[string]uint64
}

var descRefusalAuditSuppressed = prometheus.NewDesc("dmvpn_nhrp_refusal_audit_suppressed_total",
	"Lines about refused NHRP packets (the log, or with IPsec the audit stream) the limit held back, by check: "+
		"10 a second with a burst of 20, one per sender and check a second. The refusals themselves are all in dmvpn_nhrp_refused_total.",
	[]string{"check"}, nil)

// collectRefusalAudit emits the suppressed refusal lines of src, if it
// counts them.
func collectRefusalAudit(ch chan<- prometheus.Metric, src Source) {
	rs, ok := src.(RefusalAuditSource)
	if !ok {
		return
	}
	for check, n := range rs.RefusalAuditSuppressed() {
		ch <- prometheus.MustNewConstMetric(descRefusalAuditSuppressed, prometheus.CounterValue, float64(n), check)
	}
}
