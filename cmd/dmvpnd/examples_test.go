package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/internal/pki"
)

// writeExamplePKI writes the certificates the examples name (their
// /etc/dmvpn/pki/ layout) into dir.
func writeExamplePKI(t *testing.T, dir string) *pki.CA {
	t.Helper()
	ca, err := pki.WriteSet(dir, map[string]string{
		"hub1":   "C=FI, O=Example, OU=GRE=172.16.0.1, OU=AS=65000, CN=hub1",
		"hub2":   "C=FI, O=Example, OU=GRE=172.16.0.2, OU=AS=65000, CN=hub2",
		"spoke1": "C=FI, O=Example, OU=GRE=172.16.1.1, OU=AS=65001, OU=NET=10.1.0.0/24, CN=spoke1",
	})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// TestCheckExamples: dmvpnd --check accepts every shipped example, each a
// complete IPsec configuration, with certificates made for it.
func TestCheckExamples(t *testing.T) {
	files, err := filepath.Glob("../../examples/*.yaml")
	if err != nil || len(files) < 3 {
		t.Fatalf("examples: %v %v", files, err)
	}
	dir := t.TempDir()
	writeExamplePKI(t, dir)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(b, []byte("\nipsec:\n")) {
			t.Errorf("%s has no ipsec section", f)
		}
		path := filepath.Join(dir, filepath.Base(f))
		if err := os.WriteFile(path, bytes.ReplaceAll(b, []byte("/etc/dmvpn/pki/"), []byte(dir+"/")), 0o644); err != nil {
			t.Fatal(err)
		}
		var out, errb bytes.Buffer
		if code := Main([]string{"--check", "-c", path}, &out, &errb); code != 0 || !strings.Contains(out.String(), "configuration OK") || errb.Len() != 0 {
			t.Errorf("%s: exit %d\n%s%s", f, code, out.String(), errb.String())
		}
	}
}

// TestCheckRefusesBadCertificates: --check refuses each bad certificate
// with the field and line, and warns about one that expires within 30
// days.
func TestCheckRefusesBadCertificates(t *testing.T) {
	dir := t.TempDir()
	ca := writeExamplePKI(t, dir)
	b, err := os.ReadFile("../../examples/spoke1.yaml")
	if err != nil {
		t.Fatal(err)
	}
	b = bytes.ReplaceAll(b, []byte("/etc/dmvpn/pki/"), []byte(dir+"/"))
	lineOf := func(key string) int {
		for i, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "  "+key+": "+dir) {
				return i + 1
			}
		}
		t.Fatalf("no %s in the example", key)
		return 0
	}
	certLine, keyLine := lineOf("cert"), lineOf("key")
	subj, _ := pki.ParseDN("C=FI, O=Example, OU=GRE=172.16.1.1, CN=spoke1")
	for name, span := range map[string][2]time.Time{
		"expired": {time.Now().Add(-48 * time.Hour), time.Now().Add(-time.Hour)},
		"soon":    {time.Now().Add(-time.Hour), time.Now().Add(20*24*time.Hour + time.Hour)},
	} {
		is, err := ca.Issue(subj, span[0], span[1])
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := is.Write(dir, name); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "other"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.WriteSet(filepath.Join(dir, "other"), map[string]string{"foreign": "C=FI, O=Example, OU=GRE=172.16.1.1, CN=spoke1"}); err != nil {
		t.Fatal(err)
	}
	check := func(cert, key string) (int, string, string) {
		f := strings.Replace(string(b), "  cert: "+dir+"/spoke1.crt", "  cert: "+cert, 1)
		f = strings.Replace(f, "  key: "+dir+"/spoke1.key", "  key: "+key, 1)
		path := filepath.Join(dir, "spoke.yaml")
		if err := os.WriteFile(path, []byte(f), 0o644); err != nil {
			t.Fatal(err)
		}
		var out, errb bytes.Buffer
		code := Main([]string{"--check", "-c", path}, &out, &errb)
		return code, out.String(), errb.String()
	}
	p := func(n string) string { return filepath.Join(dir, n) }
	for _, c := range []struct {
		name, cert, key, want string
	}{
		{"OU=GRE= of another node", p("hub1.crt"), p("hub1.key"), fmt.Sprintf("line %d: ipsec.cert: OU=GRE=172.16.0.1 but tunnel.address is 172.16.1.1", certLine)},
		{"key of another certificate", p("spoke1.crt"), p("hub1.key"), fmt.Sprintf("line %d: ipsec.key: %s is not the key of ipsec.cert", keyLine, p("hub1.key"))},
		{"not signed by ca", p("other/foreign.crt"), p("other/foreign.key"), fmt.Sprintf("line %d: ipsec.cert: C=FI, O=Example, OU=GRE=172.16.1.1, CN=spoke1 was not signed by ipsec.ca", certLine)},
		{"certificate as key", p("spoke1.crt"), p("spoke1.crt"), fmt.Sprintf("line %d: ipsec.key: %s holds a certificate, not a private key", keyLine, p("spoke1.crt"))},
		{"key as certificate", p("spoke1.key"), p("spoke1.key"), fmt.Sprintf("line %d: ipsec.cert: %s holds a private key, not a certificate", certLine, p("spoke1.key"))},
		{"expired", p("expired.crt"), p("expired.key"), fmt.Sprintf("line %d: ipsec.cert: C=FI, O=Example, OU=GRE=172.16.1.1, CN=spoke1 expired on ", certLine)},
	} {
		code, out, errs := check(c.cert, c.key)
		if code != 1 || out != "" || !strings.Contains(errs, c.want) {
			t.Errorf("%s: exit %d, stdout %q, stderr:\n%s\nwant it to contain %q", c.name, code, out, errs, c.want)
		}
	}
	code, out, errs := check(p("soon.crt"), p("soon.key"))
	want := fmt.Sprintf("warning: line %d: ipsec.cert: C=FI, O=Example, OU=GRE=172.16.1.1, CN=spoke1 expires in 20 days (", certLine)
	if code != 0 || !strings.Contains(out, "configuration OK") || !strings.Contains(errs, want) {
		t.Errorf("expiring soon: exit %d, stdout %q, stderr %q; want OK and %q", code, out, errs, want)
	}
}
