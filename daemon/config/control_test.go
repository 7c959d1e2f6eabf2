package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// writeTLS writes a self-signed certificate and its key for the control
// API's listener.
func writeTLS(t *testing.T, dir string) (string, string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "dmvpnd"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalECPrivateKey(key)
	cert, keyf := filepath.Join(dir, "api.crt"), filepath.Join(dir, "api.key")
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyf, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}), 0o600); err != nil {
		t.Fatal(err)
	}
	return cert, keyf
}

// TestControlChecks: the API on TCP needs TLS and a way to authenticate;
// a token file others can read, or too short, is refused; the TCP keys
// without control.listen are mistakes.
func TestControlChecks(t *testing.T) {
	dir := t.TempDir()
	cert, key := writeTLS(t, dir)
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte("0123456789abcdef0123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(dir, "open-token")
	if err := os.WriteFile(open, []byte("0123456789abcdef0123\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	short := filepath.Join(dir, "short-token")
	if err := os.WriteFile(short, []byte("abc\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctl := func(body string) string { return inClear(minimal + "control:\n" + body) }
	// minimal is 8 lines: control is line 9, its keys from line 10.
	for _, c := range []struct {
		name, body string
		want       []string
	}{
		{"listen without TLS or authentication", "  listen: 127.0.0.1:9999\n", []string{
			"line 10: control.listen: the API on TCP is served over TLS only: set control.tls_cert and control.tls_key",
			"line 10: control.listen: the API on TCP needs authentication: control.token_file (a bearer token) or control.client_ca (client certificates)"}},
		{"listen with TLS, without authentication", fmt.Sprintf("  listen: 127.0.0.1:9999\n  tls_cert: %s\n  tls_key: %s\n", cert, key), []string{
			"line 10: control.listen: the API on TCP needs authentication: control.token_file (a bearer token) or control.client_ca (client certificates)"}},
		{"a token others can read", fmt.Sprintf("  listen: 127.0.0.1:9999\n  tls_cert: %s\n  tls_key: %s\n  token_file: %s\n", cert, key, open), []string{
			fmt.Sprintf("line 13: control.token_file: %s has mode 0644: others can read the token (chmod 0600)", open)}},
		{"a short token", fmt.Sprintf("  listen: 127.0.0.1:9999\n  tls_cert: %s\n  tls_key: %s\n  token_file: %s\n", cert, key, short), []string{
			fmt.Sprintf("line 13: control.token_file: %s holds a token of 3 bytes: use at least 16 (like: head -c 32 /dev/urandom | base64)", short)}},
		{"TCP keys without listen", fmt.Sprintf("  token_file: %s\n  client_ca: %s\n", tok, cert), []string{
			"line 10: control.token_file: only used with control.listen (the API on TCP)",
			"line 11: control.client_ca: only used with control.listen (the API on TCP)"}},
		{"a key that is not the certificate's", fmt.Sprintf("  listen: 127.0.0.1:9999\n  tls_cert: %s\n  tls_key: %s\n  token_file: %s\n", cert, tok, tok), []string{
			"line 12: control.tls_key: tls: failed to find any PEM data in key input"}},
		{"an unknown group", "  group: no-such-group-dmvpn\n", []string{
			"line 10: control.group: group: unknown group no-such-group-dmvpn"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if diff := cmp.Diff(c.want, errorLines(t, ctl(c.body))); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	good := ctl(fmt.Sprintf("  group: \"0\"\n  listen: 127.0.0.1:9999\n  tls_cert: %s\n  tls_key: %s\n  token_file: %s\n  client_ca: %s\n", cert, key, tok, cert))
	cfg, err := Parse([]byte(good), "good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := Control{Socket: DefaultSocket, Group: "0", GID: 0, Listen: "127.0.0.1:9999", TokenFile: tok, TLSCert: cert, TLSKey: key, ClientCA: cert}
	if diff := cmp.Diff(want, cfg.Control); diff != "" {
		t.Errorf("control (-want +got):\n%s", diff)
	}
	back, err := Parse(cfg.YAML(), "rendered")
	if err != nil || back.Control != cfg.Control {
		t.Errorf("rendered: %v\n%+v", err, back)
	}
}
