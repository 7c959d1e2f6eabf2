package ctl

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/daemon/control"
)

// selfSigned makes a certificate for 127.0.0.1 that is its own CA, and
// writes it as PEM.
func selfSigned(t *testing.T, path string) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "dmvpnd"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestRemote: --server reaches the API on TCP over TLS with the token
// file; without a token (or with a wrong one) it is refused.
func TestRemote(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.crt")
	cert := selfSigned(t, ca)
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte("s3cret-token-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := control.NewServer(fakeDaemon{}, nil)
	defer s.Close()
	if err := s.ListenTCP("127.0.0.1:0", control.TCPAuth{Certificate: cert, Token: []byte("s3cret-token-0123456789")}); err != nil {
		t.Fatal(err)
	}
	addr := s.Addrs()[0].String()
	out, errb, code := runCtl(t, "--server", addr, "--ca", ca, "--token-file", tok, "show", "version")
	if code != 0 || !strings.Contains(out, "Node spoke1 (spoke)") || !strings.Contains(out, "Control socket "+addr) {
		t.Errorf("show version over TCP: exit %d\n%s%s", code, out, errb)
	}
	if _, errb, code := runCtl(t, "--server", addr, "--ca", ca, "show", "version"); code != 1 || !strings.Contains(errb, "give --token-file or --cert and --key") {
		t.Errorf("without a token: exit %d, %q", code, errb)
	}
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("not-the-token-0123456789"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, errb, code := runCtl(t, "--server", addr, "--ca", ca, "--token-file", bad, "show", "version"); code != 1 || !strings.Contains(errb, "authentication required") {
		t.Errorf("wrong token: exit %d, %q", code, errb)
	}
}
