package metrics

import (
	"time"

	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/ipsec"
)

// The IPsec families, read from the manager's Stats at scrape time. A
// Source that also implements control.CryptoSource (dmvpnd's App) has
// them while IPsec is on; without IPsec none is exported.
var (
	descIPsecSAs = prometheus.NewDesc("dmvpn_ipsec_sas",
		"IKE SAs charon holds, by state (charon's IKE SA state, lower case).", []string{"state"}, nil)
	descIPsecIKEFailures = prometheus.NewDesc("dmvpn_ipsec_ike_failures_total",
		"SA bring-ups that failed, by reason (initiate, timeout, load-conn, charon unreachable, …).", []string{"reason"}, nil)
	descIPsecRefused = prometheus.NewDesc("dmvpn_ipsec_registrations_refused_total",
		"NHRP registrations refused by the certificate check, by kind (no_sa, certificate_expired, gre_mismatch, …). "+
			"Each is also counted, by CIE code, in dmvpn_nhrp_registrations_total{result=\"refused\"}.", []string{"reason"}, nil)
	descIPsecClaimsRefused = prometheus.NewDesc("dmvpn_ipsec_claims_refused_total",
		"What NHRP packets claimed about a peer (a requester, a responder, a shortcut's prefix, a shortcut peer's address) that the certificate of its SA did not prove, by kind (gre_mismatch, net_mismatch, no_sa, …).", []string{"reason"}, nil)
	descIPsecAccepted = prometheus.NewDesc("dmvpn_ipsec_registrations_accepted_total",
		"NHRP registrations the certificate check accepted (every registration, refreshes included).", nil, nil)
	descIPsecSADowns = prometheus.NewDesc("dmvpn_ipsec_sa_downs_total",
		"Peers that lost their last established SA (deleted by either side, expired, failed).", nil, nil)
	descIPsecRestarts = prometheus.NewDesc("dmvpn_ipsec_charon_restarts_total",
		"Times charon was lost and came back (dmvpnd restarts the charon it runs), credentials and connections reloaded.", nil, nil)
	descIPsecCharonUp = prometheus.NewDesc("dmvpn_ipsec_charon_up",
		"1 while dmvpnd is connected to charon over VICI.", nil, nil)
	descIPsecCRLNext = prometheus.NewDesc("dmvpn_ipsec_crl_next_update_seconds",
		"Seconds until the next update of a CRL in force, by issuer (negative once it is stale).", []string{"issuer"}, nil)
	descIPsecRevoked = prometheus.NewDesc("dmvpn_ipsec_revoked_total",
		"SAs ended because a CRL in force revoked the peer's certificate.", nil, nil)
	descIPsecCertExpiry = prometheus.NewDesc("dmvpn_ipsec_certificate_expiry_timestamp_seconds",
		"When a loaded certificate (this node's, or a CA's) expires, as a Unix time, by subject: alert on "+
			"dmvpn_ipsec_certificate_expiry_timestamp_seconds - time() < 30 * 86400.", []string{"subject"}, nil)
)

var ipsecDescs = []*prometheus.Desc{descIPsecSAs, descIPsecIKEFailures, descIPsecRefused, descIPsecClaimsRefused, descIPsecAccepted,
	descIPsecSADowns, descIPsecRestarts, descIPsecCharonUp, descIPsecCertExpiry, descIPsecCRLNext, descIPsecRevoked}

// ikeStates are strongSwan's IKE SA states, always exported (0 when none).
var ikeStates = []string{"created", "connecting", "established", "passive", "rekeying", "rekeyed", "deleting", "destroying"}

// refusalKinds are the kinds of refusal, always exported (0 when none).
var refusalKinds = []string{ipsec.RefusedNoSA, ipsec.RefusedIdentities, ipsec.RefusedNoCert, ipsec.RefusedBadIdentity,
	ipsec.RefusedExpired, ipsec.RefusedNoGRE, ipsec.RefusedWrongGRE, ipsec.RefusedRevoked}

// ipsecStats returns the IPsec statistics of src; false when IPsec is off.
func ipsecStats(src Source) (ipsec.Stats, bool) {
	cs, ok := src.(control.CryptoSource)
	if !ok {
		return ipsec.Stats{}, false
	}
	c := cs.Crypto()
	if c == nil {
		return ipsec.Stats{}, false
	}
	return c.Stats(), true
}

// collectIPsec emits the IPsec families of st.
func collectIPsec(ch chan<- prometheus.Metric, st ipsec.Stats) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	byState := map[string]int{}
	for s, n := range st.SAsByState {
		byState[strings.ToLower(s)] += n
	}
	for _, s := range ikeStates {
		gauge(descIPsecSAs, float64(byState[s]), s)
		delete(byState, s)
	}
	for s, n := range byState {
		gauge(descIPsecSAs, float64(n), s)
	}
	for r, n := range st.IKEFailures {
		counter(descIPsecIKEFailures, n, r)
	}
	for _, k := range refusalKinds {
		counter(descIPsecRefused, st.Refused[k], k)
	}
	for k, n := range st.Refused {
		if !slices.Contains(refusalKinds, k) {
			counter(descIPsecRefused, n, k)
		}
	}
	for k, n := range st.ClaimsRefused {
		counter(descIPsecClaimsRefused, n, k)
	}
	counter(descIPsecAccepted, st.Accepted)
	counter(descIPsecRevoked, st.Revoked)
	for _, l := range st.CRLs {
		if !l.NextUpdate.IsZero() {
			gauge(descIPsecCRLNext, time.Until(l.NextUpdate).Seconds(), l.Issuer)
		}
	}
	counter(descIPsecSADowns, st.SADowns)
	counter(descIPsecRestarts, st.Restarts)
	up := 0.0
	if st.Connected {
		up = 1
	}
	gauge(descIPsecCharonUp, up)
	for subj, t := range st.CertExpires {
		gauge(descIPsecCertExpiry, float64(t.Unix()), subj)
	}
}
