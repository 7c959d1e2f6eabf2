package ipsec

import (
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/opendmvpn/dmvpn/internal/pki"
)

// TestCheckExpiry: a certificate is warned about once as it comes
// within 30, then 7, then 1 days of its expiry, and once more when it
// has expired — this node's, the CA's and the peers' alike; a renewed
// one starts again.
func TestCheckExpiry(t *testing.T) {
	ca, err := pki.NewCA("C=FI, O=Example, CN=CA")
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now().Truncate(time.Second)
	subj, _ := pki.ParseDN("C=FI, O=Example, OU=GRE=172.16.2.1, CN=s2")
	peer, err := ca.Issue(subj, t0.Add(-time.Hour), t0.Add(40*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.InfoLevel)
	own := CertInfo{Subject: "C=FI, O=Example, OU=GRE=172.16.1.1, CN=s1", Serial: "1a", NotAfter: t0.Add(20 * 24 * time.Hour)}
	m := &Manager{log: zap.New(core),
		creds: &credSet{own: own, expires: map[string]time.Time{own.Subject: own.NotAfter, "C=FI, O=Example, CN=CA": t0.Add(3650 * 24 * time.Hour)}},
		certs: map[string][]byte{"C=FI, O=Example, OU=GRE=172.16.2.1, CN=s2": peer.Cert.Raw}, sas: newSATable()}
	m.sas.put(SA{IKEID: "1", State: "ESTABLISHED", RemoteID: "C=FI, O=Example, OU=GRE=172.16.2.1, CN=s2"})
	step := func(d time.Duration) []string {
		t.Helper()
		m.checkExpiry(t0.Add(d))
		var out []string
		for _, e := range logs.TakeAll() {
			out = append(out, e.Message+" ("+e.ContextMap()["certificate"].(string)+")")
		}
		slices.Sort(out)
		return out
	}
	for _, c := range []struct {
		at   time.Duration
		want []string
	}{
		{0, []string{"certificate expires in 20 days (this node)"}},
		{time.Hour, nil}, // said once
		{12*24*time.Hour + time.Hour, []string{"certificate expires in 27 days (peer)"}},
		{13*24*time.Hour + time.Hour, []string{"certificate expires in 6 days (this node)"}},
		{19*24*time.Hour + time.Hour, []string{"certificate expires in less than a day (this node)"}},
		{19*24*time.Hour + 2*time.Hour, nil},
		{20*24*time.Hour + time.Hour, []string{"certificate expired (this node)"}},
		{20*24*time.Hour + 2*time.Hour, nil},
	} {
		if diff := cmp.Diff(c.want, step(c.at)); diff != "" {
			t.Errorf("at +%v (-want +got):\n%s", c.at, diff)
		}
	}
	// Renewed: a new certificate of the same subject is watched afresh.
	m.mu.Lock()
	m.creds = &credSet{own: CertInfo{Subject: own.Subject, Serial: "2b", NotAfter: t0.Add(45 * 24 * time.Hour)},
		expires: map[string]time.Time{own.Subject: t0.Add(45 * 24 * time.Hour)}}
	m.mu.Unlock()
	if got := step(20*24*time.Hour + 3*time.Hour); !cmp.Equal(got, []string{"certificate expires in 24 days (this node)"}) {
		t.Errorf("renewed, 24 days left: %q", got)
	}
	if got := step(40 * 24 * time.Hour); !cmp.Equal(got, []string{"certificate expired (peer)", "certificate expires in 5 days (this node)"}) {
		t.Errorf("renewed, 5 days left: %q", got)
	}
}

// TestExpiryDepartedPeers: only the certificates of peers with an SA are
// warned about; the captured certificate of a peer whose SAs are gone is
// forgotten once it has not been seen for certKeep (a hub's departed
// spokes were warned about at 30, 7 and 1 days, and kept, for ever), one
// seen lately is kept (its SA may be coming up, a registration waiting
// for it) but not warned about, and a live peer's is kept however old
// its capture.
func TestExpiryDepartedPeers(t *testing.T) {
	ca, err := pki.NewCA("C=FI, O=Example, CN=CA")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().Truncate(time.Second)
	issue := func(dn string) []byte {
		t.Helper()
		subj, err := pki.ParseDN(dn)
		if err != nil {
			t.Fatal(err)
		}
		is, err := ca.Issue(subj, now.Add(-time.Hour), now.Add(5*24*time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		return is.Cert.Raw
	}
	live, gone, recent := "C=FI, O=Example, OU=GRE=172.16.2.1, CN=live",
		"C=FI, O=Example, OU=GRE=172.16.2.2, CN=gone", "C=FI, O=Example, OU=GRE=172.16.2.3, CN=recent"
	core, logs := observer.New(zapcore.InfoLevel)
	m := verifyManager(t)
	m.log = zap.New(core)
	m.certFirst, m.certListed = map[string]time.Time{}, map[string]string{}
	for _, c := range []struct {
		id   string
		seen time.Duration
	}{{live, 2 * time.Hour}, {gone, 2 * time.Hour}, {recent, time.Minute}} {
		der := issue(c.id)
		m.certs[c.id], m.certSeen[c.id], m.certFirst[string(der)] = der, now.Add(-c.seen), now.Add(-c.seen)
	}
	m.sas.put(SA{IKEID: "1", State: "ESTABLISHED", RemoteID: live})
	goneDER := m.certs[gone]

	m.checkExpiry(now)
	var warned []string
	for _, e := range logs.TakeAll() {
		warned = append(warned, e.ContextMap()["subject"].(string))
	}
	if !slices.Equal(warned, []string{live}) {
		t.Errorf("warned about %q, want only the peer with an SA", warned)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for id, want := range map[string]bool{live: true, gone: false, recent: true} {
		_, kept := m.certs[id]
		_, seen := m.certSeen[id]
		if kept != want || seen != want {
			t.Errorf("%s: kept %v (seen %v), want %v", id, kept, seen, want)
		}
	}
	if _, ok := m.certFirst[string(goneDER)]; ok {
		t.Error("the departed peer's certificate is still in certFirst")
	}
}
