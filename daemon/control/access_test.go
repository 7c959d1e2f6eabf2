package control

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// testCA issues certificates for the TLS tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t *testing.T, cn string) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

func (ca *testCA) issue(t *testing.T, cn string, usage x509.ExtKeyUsage, ips ...net.IP) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn}, IPAddresses: ips,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestTCPNeedsAuth: without a token or client CAs the API is not served
// on TCP at all.
func TestTCPNeedsAuth(t *testing.T) {
	s := NewServer(&fakeDaemon{}, nil)
	defer s.Close()
	if err := s.ListenTCP("127.0.0.1:0", TCPAuth{}); !errors.Is(err, ErrNoAuth) {
		t.Errorf("ListenTCP without authentication: %v", err)
	}
}

// TestTCPAuth: on TCP (TLS) a caller gets in with the token or a client
// certificate the configured CA signed, and gets 401 otherwise; a client
// certificate of another CA fails the handshake.
func TestTCPAuth(t *testing.T) {
	ca, other := newTestCA(t, "control CA"), newTestCA(t, "other CA")
	s := NewServer(&fakeDaemon{reload: func() ([]string, error) { return nil, nil }}, nil)
	defer s.Close()
	auth := TCPAuth{Certificate: ca.issue(t, "dmvpnd", x509.ExtKeyUsageServerAuth, net.ParseIP("127.0.0.1")),
		ClientCAs: ca.pool, Token: []byte("0123456789abcdef-token")}
	if err := s.ListenTCP("127.0.0.1:0", auth); err != nil {
		t.Fatal(err)
	}
	addr := s.Addrs()[0].String()
	ctx := context.Background()
	good := ca.issue(t, "operator", x509.ExtKeyUsageClientAuth)
	bad := other.issue(t, "intruder", x509.ExtKeyUsageClientAuth)
	for _, c := range []struct {
		name string
		o    RemoteOptions
		want int // HTTP status; -1: refused, by the handshake or 401
	}{
		{"token", RemoteOptions{CAs: ca.pool, Token: "0123456789abcdef-token"}, 200},
		{"client certificate", RemoteOptions{CAs: ca.pool, Certificate: &good}, 200},
		{"nothing", RemoteOptions{CAs: ca.pool}, 401},
		{"wrong token", RemoteOptions{CAs: ca.pool, Token: "0123456789abcdef-tokeN"}, 401},
		// Go's client sends no certificate the server's CAs did not sign
		// (TLS 1.3: the handshake would fail on it): either way, refused.
		{"a certificate of another CA", RemoteOptions{CAs: ca.pool, Certificate: &bad}, -1},
	} {
		var v VersionResponse
		err := NewRemoteClient(addr, c.o).Get(ctx, PathVersion, &v)
		var api *APIError
		switch {
		case c.want == 200 && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want == 401 && (!errors.As(err, &api) || api.Status != 401 || !strings.Contains(api.Msg, "authentication required")):
			t.Errorf("%s: %v, want 401", c.name, err)
		case c.want == -1 && (err == nil || errors.As(err, &api) && api.Status != 401):
			t.Errorf("%s: %v, want a failed handshake or 401", c.name, err)
		}
	}
	// The server's certificate is verified by the client.
	var v VersionResponse
	if err := NewRemoteClient(addr, RemoteOptions{CAs: other.pool, Token: "0123456789abcdef-token"}).Get(ctx, PathVersion, &v); err == nil {
		t.Errorf("a client that does not trust the server's CA got in")
	}
	// Plain HTTP gets nothing.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("GET /v1/version HTTP/1.0\r\n\r\n"))
	b := make([]byte, 512)
	n, _ := c.Read(b)
	c.Close()
	if strings.Contains(string(b[:n]), "\"daemon\"") {
		t.Errorf("plain HTTP on the TLS port answered: %q", b[:n])
	}
}

// TestSocketMode: the socket file is 0600, or 0660 and the group's with
// a group, and it goes with the server.
func TestSocketMode(t *testing.T) {
	for _, c := range []struct {
		access UnixAccess
		mode   os.FileMode
	}{{OwnerOnly, 0o600}, {UnixAccess{Group: os.Getgid()}, 0o660}} {
		sock := filepath.Join(t.TempDir(), "run", "dmvpnd.sock")
		s := NewServer(&fakeDaemon{}, nil)
		if err := s.ListenUnix(sock, c.access); err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(sock)
		if err != nil || st.Mode().Perm() != c.mode || st.Mode()&os.ModeSocket == 0 {
			t.Errorf("group %d: socket %v, %v; want a socket of mode %v", c.access.Group, st.Mode(), err, c.mode)
		}
		s.Close()
		if _, err := os.Stat(sock); !os.IsNotExist(err) {
			t.Errorf("the socket file stays after Close: %v", err)
		}
	}
}

// TestAllowedPeer: root, dmvpnd's own user and the group's members;
// nobody else.
func TestAllowedPeer(t *testing.T) {
	me := os.Geteuid()
	other := 4242
	if me == other {
		other = 4243
	}
	for _, c := range []struct {
		access UnixAccess
		p      Peer
		want   bool
	}{
		{OwnerOnly, Peer{UID: 0, GID: 0}, true},
		{OwnerOnly, Peer{UID: me, GID: 4242}, true},
		{OwnerOnly, Peer{UID: other, GID: other}, false},
		{UnixAccess{Group: 4300}, Peer{UID: other, GID: 4300}, true},
		{UnixAccess{Group: 4300}, Peer{UID: other, GID: 4301, PID: -1}, false},
	} {
		if got := c.access.allowedPeer(c.p); got != c.want {
			t.Errorf("%+v with %+v: %v, want %v", c.p, c.access, got, c.want)
		}
	}
}

// envPeerHelper makes the test binary a client of the socket it names:
// it prints the HTTP status of GET /v1/version and exits (TestMain).
const envPeerHelper = "DMVPN_CONTROL_PEER_HELPER"

func TestMain(m *testing.M) {
	if sock := os.Getenv(envPeerHelper); sock != "" {
		var v VersionResponse
		err := NewClient(sock).Get(context.Background(), PathVersion, &v)
		var api *APIError
		switch {
		case err == nil:
			os.Stdout.WriteString("200")
		case errors.As(err, &api):
			os.Stdout.WriteString(strconv.Itoa(api.Status))
		default:
			os.Stdout.WriteString(err.Error())
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestPeerCredentials: a caller of another user (nobody) is refused on
// the socket by its credentials (SO_PEERCRED), and let in once the
// socket's group is one of its groups. The socket is made reachable to
// it on purpose (mode 0666) so that the credential check, not the mode,
// decides. Needs root (to run a process as nobody); the client is this
// test binary (TestMain), copied where nobody can run it.
func TestPeerCredentials(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs a client as another user to check its credentials")
	}
	const nobody, nogroup = 65534, 65534
	dir, err := os.MkdirTemp("", "dmvpn-peercred-") // reachable by nobody, unlike t.TempDir()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "d.sock")
	l, err := listenUnixSocket(sock, 0o666, -1)
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(&fakeDaemon{}, nil)
	defer s.Close()
	if err := s.Serve(l); err != nil {
		t.Fatal(err)
	}
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "client")
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	asNobody := func() string {
		t.Helper()
		cmd := exec.Command("setpriv", "--reuid="+strconv.Itoa(nobody), "--regid="+strconv.Itoa(nogroup), "--clear-groups", bin)
		cmd.Env = []string{envPeerHelper + "=" + sock}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("the client as nobody: %v: %s", err, out)
		}
		return string(out)
	}
	if got := asNobody(); got != "403" {
		t.Errorf("nobody without the group: HTTP %s, want 403", got)
	}
	s.mu.Lock()
	s.unixAccess = UnixAccess{Group: nogroup}
	s.mu.Unlock()
	if got := asNobody(); got != "200" {
		t.Errorf("nobody in the socket's group: HTTP %s, want 200", got)
	}
}
