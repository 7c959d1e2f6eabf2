package ipsec

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/opendmvpn/dmvpn/internal/pki"
)

// TestCheckCredentials: each bad credential is named by its field, with
// what is wrong; a certificate expiring within 30 days is a warning only.
func TestCheckCredentials(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.NewCA("C=FI, O=Example, CN=CA")
	if err != nil {
		t.Fatal(err)
	}
	caFile, err := ca.WriteCA(dir, "ca")
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.NewCA("C=FI, O=Other, CN=Other CA")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	issue := func(c *pki.CA, name, dn string, from, to time.Time) (string, string) {
		t.Helper()
		subj, err := pki.ParseDN(dn)
		if err != nil {
			t.Fatal(err)
		}
		is, err := c.Issue(subj, from, to)
		if err != nil {
			t.Fatal(err)
		}
		cert, key, err := is.Write(dir, name)
		if err != nil {
			t.Fatal(err)
		}
		return cert, key
	}
	goodCert, goodKey := issue(ca, "good", "C=FI, O=Example, OU=GRE=172.16.1.1, CN=spoke1", time.Time{}, time.Time{})
	_, otherKey := issue(ca, "another", "C=FI, O=Example, OU=GRE=172.16.1.1, CN=another", time.Time{}, time.Time{})
	wrongGRE, wrongGREKey := issue(ca, "wronggre", "C=FI, O=Example, OU=GRE=172.16.9.9, CN=spoke1", time.Time{}, time.Time{})
	noGRE, noGREKey := issue(ca, "nogre", "C=FI, O=Example, CN=hub1", time.Time{}, time.Time{})
	foreign, foreignKey := issue(other, "foreign", "C=FI, O=Example, OU=GRE=172.16.1.1, CN=spoke1", time.Time{}, time.Time{})
	expired, expiredKey := issue(ca, "expired", "C=FI, O=Example, OU=GRE=172.16.1.1, CN=spoke1", now.Add(-48*time.Hour), now.Add(-24*time.Hour))
	future, futureKey := issue(ca, "future", "C=FI, O=Example, OU=GRE=172.16.1.1, CN=spoke1", now.Add(24*time.Hour), now.AddDate(1, 0, 0))
	soon, soonKey := issue(ca, "soon", "C=FI, O=Example, OU=GRE=172.16.1.1, CN=spoke1", now.Add(-time.Hour), now.Add(10*24*time.Hour+time.Hour))
	both := filepath.Join(dir, "both.pem")
	cb, _ := os.ReadFile(goodCert)
	kb, _ := os.ReadFile(goodKey)
	if err := os.WriteFile(both, append(cb, kb...), 0o600); err != nil {
		t.Fatal(err)
	}
	spoke := netip.MustParseAddr("172.16.1.1")

	type want struct {
		field, contains string
		warning         bool
	}
	cases := []struct {
		name      string
		cert, key string
		cas       []string
		hub       bool
		want      []want
	}{
		{"good", goodCert, goodKey, nil, false, nil},
		{"OU=GRE= is not the tunnel address", wrongGRE, wrongGREKey, nil, false,
			[]want{{"cert", "OU=GRE=172.16.9.9 but tunnel.address is 172.16.1.1", false}}},
		{"a key that is not the certificate's", goodCert, otherKey, nil, false,
			[]want{{"key", "is not the key of ipsec.cert (C=FI, O=Example, OU=GRE=172.16.1.1, CN=spoke1)", false}}},
		{"not signed by ca", foreign, foreignKey, nil, false,
			[]want{{"cert", "was not signed by ipsec.ca (its issuer is C=FI, O=Other, CN=Other CA)", false}}},
		{"the certificate given as the key", goodCert, goodCert, nil, false,
			[]want{{"key", "holds a certificate, not a private key", false}}},
		{"the key given as the certificate", goodKey, goodKey, nil, false,
			[]want{{"cert", "holds a private key, not a certificate", false}}},
		{"the key given as the CA", goodCert, goodKey, []string{goodKey}, false,
			[]want{{"ca", "holds a private key, not a CA certificate", false}}},
		{"a node certificate given as the CA", goodCert, goodKey, []string{goodCert}, false,
			[]want{{"ca", "is not a CA certificate", false}}},
		{"the key in the certificate's file", both, goodKey, nil, false,
			[]want{{"cert", "holds a private key as well", false}}},
		{"expired", expired, expiredKey, nil, false, []want{{"cert", "expired on", false}}},
		{"not yet valid", future, futureKey, nil, false, []want{{"cert", "is not valid before", false}}},
		{"expires within 30 days", soon, soonKey, nil, false, []want{{"cert", "expires in 10 days", true}}},
		{"a spoke without OU=GRE=", noGRE, noGREKey, nil, false, []want{{"cert", "has no OU=GRE= (every hub would refuse it)", false}}},
		{"a hub without OU=GRE=", noGRE, noGREKey, nil, true, []want{{"cert", "spokes refuse it unless their hub_identity names it", true}}},
		{"missing file", filepath.Join(dir, "none.crt"), goodKey, nil, false, []want{{"cert", "no such file", false}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cas := c.cas
			if cas == nil {
				cas = []string{caFile}
			}
			got := CheckCredentials(CredentialCheck{CACerts: cas, Cert: c.cert, Key: c.key, Tunnel: spoke, Hub: c.hub, Now: now})
			if len(got) != len(c.want) {
				t.Fatalf("problems %v, want %d", got, len(c.want))
			}
			for i, w := range c.want {
				if got[i].Field != w.field || !strings.Contains(got[i].Msg, w.contains) || got[i].Warning != w.warning {
					t.Errorf("problem %+v, want field %s, warning %v, containing %q", got[i], w.field, w.warning, w.contains)
				}
			}
			if err := credentialErrors(got); (err == nil) != (len(c.want) == 0 || c.want[0].warning) {
				t.Errorf("credentialErrors: %v", err)
			}
		})
	}
}

func TestDaysLeft(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	got := []string{DaysLeft(now.Add(-time.Hour), now), DaysLeft(now.Add(5*time.Hour), now), DaysLeft(now.Add(36*time.Hour), now), DaysLeft(now.AddDate(0, 0, 30), now)}
	if diff := cmp.Diff([]string{"0 days (expired)", "less than a day", "1 day", "30 days"}, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}
