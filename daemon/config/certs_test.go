package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/opendmvpn/dmvpn/internal/pki"
)

// TestCertificateChecks: the certificates are read with the file; each
// bad one is refused with the field and line of the key that names it.
func TestCertificateChecks(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.WriteSet(dir, map[string]string{
		"spoke1":   "C=FI, O=Example, OU=GRE=172.16.1.1, CN=spoke1",
		"wronggre": "C=FI, O=Example, OU=GRE=172.16.9.9, CN=spoke1",
	})
	if err != nil {
		t.Fatal(err)
	}
	otherDir := t.TempDir()
	if _, err := pki.WriteSet(otherDir, map[string]string{"foreign": "C=FI, O=Example, OU=GRE=172.16.1.1, CN=spoke1"}); err != nil {
		t.Fatal(err)
	}
	subj, _ := pki.ParseDN("C=FI, O=Example, OU=GRE=172.16.1.1, CN=spoke1")
	now := time.Now()
	for name, span := range map[string][2]time.Time{
		"expired": {now.Add(-48 * time.Hour), now.Add(-time.Hour)},
		"soon":    {now.Add(-time.Hour), now.Add(12*24*time.Hour + time.Hour)},
	} {
		is, err := ca.Issue(subj, span[0], span[1])
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := is.Write(dir, name); err != nil {
			t.Fatal(err)
		}
	}
	p := func(name string) string { return filepath.Join(dir, name) }
	file := func(caf, cert, key string) string {
		return fmt.Sprintf("%sipsec:\n  ca: %s\n  cert: %s\n  key: %s\n", minimal, caf, cert, key)
	}
	// minimal is 8 lines: ipsec is line 9, ca 10, cert 11, key 12.
	cases := []struct {
		name, file string
		want       []string
	}{
		{"OU=GRE= is not the tunnel address", file(p("ca.crt"), p("wronggre.crt"), p("wronggre.key")),
			[]string{"line 11: ipsec.cert: OU=GRE=172.16.9.9 but tunnel.address is 172.16.1.1"}},
		{"a key that is not the certificate's", file(p("ca.crt"), p("spoke1.crt"), p("wronggre.key")),
			[]string{"line 12: ipsec.key: " + p("wronggre.key") + " is not the key of ipsec.cert (C=FI, O=Example, OU=GRE=172.16.1.1, CN=spoke1)"}},
		{"not signed by ca", file(p("ca.crt"), filepath.Join(otherDir, "foreign.crt"), filepath.Join(otherDir, "foreign.key")),
			[]string{"line 11: ipsec.cert: C=FI, O=Example, OU=GRE=172.16.1.1, CN=spoke1 was not signed by ipsec.ca (its issuer is C=FI, O=Example, CN=Example DMVPN CA)"}},
		{"the certificate given as the key, and the reverse", file(p("ca.crt"), p("spoke1.key"), p("spoke1.crt")),
			[]string{"line 11: ipsec.cert: " + p("spoke1.key") + " holds a private key, not a certificate (is it the key?)",
				"line 12: ipsec.key: " + p("spoke1.crt") + " holds a certificate, not a private key (is it the certificate?)"}},
		{"expired", file(p("ca.crt"), p("expired.crt"), p("expired.key")), nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := errorLines(t, c.file)
			if c.want == nil {
				if len(got) != 1 || !contains(got[0], "line 11: ipsec.cert: C=FI, O=Example, OU=GRE=172.16.1.1, CN=spoke1 expired on ") {
					t.Errorf("errors %q, want the certificate expired at line 11", got)
				}
				return
			}
			if diff := cmp.Diff(c.want, got); diff != "" {
				t.Errorf("errors (-want +got):\n%s", diff)
			}
		})
	}

	// A good set is accepted; one expiring within 30 days with a warning
	// at its line.
	c, err := Parse([]byte(file(p("ca.crt"), p("spoke1.crt"), p("spoke1.key"))), "good.yaml")
	if err != nil || len(c.Warnings) != 0 {
		t.Fatalf("good credentials: %v, warnings %v", err, c.Warnings)
	}
	c, err = Parse([]byte(file(p("ca.crt"), p("soon.crt"), p("soon.key"))), "soon.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Warnings) != 1 || !contains(c.Warnings[0].Error(), "line 11: ipsec.cert: C=FI, O=Example, OU=GRE=172.16.1.1, CN=spoke1 expires in 12 days (") {
		t.Errorf("warnings %v, want the expiry in 12 days at line 11", c.Warnings)
	}
	// A missing file is reported once, by the file check, not again by
	// the certificate check.
	if err := os.Remove(p("soon.key")); err != nil {
		t.Fatal(err)
	}
	got := errorLines(t, file(p("ca.crt"), p("soon.crt"), p("soon.key")))
	if len(got) != 1 || !contains(got[0], "line 12: ipsec.key: open ") {
		t.Errorf("missing key: %q", got)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
