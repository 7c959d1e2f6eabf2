package ipsec

import (
	"context"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/opendmvpn/dmvpn/internal/pki"
)

// credFiles writes certificate and key pairs over the same two files,
// each with a later modification time than the one before.
type credFiles struct {
	t         *testing.T
	ca        *pki.CA
	dir       string
	cert, key string
	mtime     time.Time
}

func newCredFiles(t *testing.T) *credFiles {
	t.Helper()
	dir := t.TempDir()
	ca := newCA(t)
	return &credFiles{t: t, ca: ca, dir: dir, cert: dir + "/node.crt", key: dir + "/node.key", mtime: time.Now().Add(-time.Hour)}
}

// write issues a certificate for dn valid from..to (zero: the CA's
// defaults) and writes it and its key over the files.
func (f *credFiles) write(dn string, from, to time.Time) {
	f.t.Helper()
	subj, err := pki.ParseDN(dn)
	if err != nil {
		f.t.Fatal(err)
	}
	is, err := f.ca.Issue(subj, from, to)
	if err != nil {
		f.t.Fatal(err)
	}
	f.mtime = f.mtime.Add(time.Second)
	for path, b := range map[string][]byte{f.cert: is.CertPEM, f.key: is.KeyPEM} {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			f.t.Fatal(err)
		}
		if err := os.Chtimes(path, f.mtime, f.mtime); err != nil {
			f.t.Fatal(err)
		}
	}
}

// touch gives the files a later modification time, contents unchanged.
func (f *credFiles) touch() {
	f.t.Helper()
	f.mtime = f.mtime.Add(time.Second)
	for _, path := range []string{f.cert, f.key} {
		if err := os.Chtimes(path, f.mtime, f.mtime); err != nil {
			f.t.Fatal(err)
		}
	}
}

// watchManager is a spoke's manager on the fake VICI with the credentials
// in f loaded.
func watchManager(t *testing.T, f *credFiles, unchecked bool) (*Manager, *fakeVICI, *observer.ObservedLogs) {
	t.Helper()
	caFile, err := f.ca.WriteCA(f.dir, "ca")
	if err != nil {
		t.Fatal(err)
	}
	m := verifyManager(t)
	core, logs := observer.New(zap.InfoLevel)
	m.log = zap.New(core)
	m.cfg = Config{CACerts: []string{caFile}, Cert: f.cert, Key: f.key, Tunnel: netip.MustParseAddr("172.16.1.1"),
		UncheckedCredentials: unchecked}.withDefaults()
	cs, err := readCreds(m.cfg, false)
	if err != nil {
		t.Fatal(err)
	}
	m.creds = cs
	v := newFakeVICI(t)
	v.connect(t, m)
	t.Cleanup(m.bg.Wait)
	return m, v, logs
}

const spokeDN = "C=FI, O=Example, OU=GRE=172.16.1.1, CN=spoke1"

// TestCredentialWatchChecksLikeCheck: the file watch checks a changed set
// as dmvpnd --check and a reload do: an expired certificate, one not yet
// valid and one whose OU=GRE= is another node's are not loaded into
// charon (every hub would refuse them), the set in force stays, and each
// is warned about once however often the watch looks; a set expiring
// soon loads (a warning only).
func TestCredentialWatchChecksLikeCheck(t *testing.T) {
	f := newCredFiles(t)
	f.write(spokeDN, time.Time{}, time.Time{})
	m, v, logs := watchManager(t, f, false)
	ctx := context.Background()

	// The watch does load a good set: what it refuses below it would
	// have seen.
	f.write(spokeDN, time.Time{}, time.Time{})
	m.reloadCredsIfChanged(ctx)
	if cmds := v.commands(); !slices.Contains(cmds, "load-cert") || !slices.Contains(cmds, "load-key") {
		t.Fatalf("a good renewed set: commands %q, want it loaded", cmds)
	}
	good := m.Credentials()

	now := time.Now()
	bad := []struct {
		name, dn string
		from, to time.Time
		want     string
	}{
		{"expired", spokeDN, now.Add(-48 * time.Hour), now.Add(-24 * time.Hour), "expired on"},
		{"not yet valid", spokeDN, now.Add(24 * time.Hour), now.AddDate(1, 0, 0), "is not valid before"},
		{"another node's OU=GRE=", "C=FI, O=Example, OU=GRE=172.16.9.9, CN=spoke1", time.Time{}, time.Time{},
			"OU=GRE=172.16.9.9 but tunnel.address is 172.16.1.1"},
	}
	for _, b := range bad {
		f.write(b.dn, b.from, b.to)
		for range 3 {
			m.reloadCredsIfChanged(ctx)
		}
		if cmds := v.commands(); len(cmds) != 0 {
			t.Errorf("%s: charon was sent %q", b.name, cmds)
		}
		if !m.Credentials().Same(good) {
			t.Errorf("%s: the set in force changed", b.name)
		}
		warned := logs.FilterMessageSnippet("cannot be loaded").FilterFieldKey("error").All()
		n := 0
		for _, w := range warned {
			if strings.Contains(w.ContextMap()["error"].(string), b.want) {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%s: %d warnings naming %q, want 1 (of %d)", b.name, n, b.want, len(warned))
		}
	}

	// Expiring within 30 days: loaded.
	f.write(spokeDN, now.Add(-time.Hour), now.Add(10*24*time.Hour))
	m.reloadCredsIfChanged(ctx)
	if cmds := v.commands(); !slices.Contains(cmds, "load-cert") {
		t.Errorf("a set expiring in 10 days: commands %q, want it loaded", cmds)
	}
	if m.Credentials().Same(good) {
		t.Errorf("a set expiring in 10 days was not put in force")
	}
}

// TestCredentialWatchUnchecked: with --unchecked-credentials the watch
// loads what only belongs together (for tests of how peers refuse such a
// node), as the start does.
func TestCredentialWatchUnchecked(t *testing.T) {
	f := newCredFiles(t)
	f.write(spokeDN, time.Time{}, time.Time{})
	m, v, _ := watchManager(t, f, true)
	f.write("C=FI, O=Example, OU=GRE=172.16.9.9, CN=spoke1", time.Time{}, time.Time{})
	m.reloadCredsIfChanged(context.Background())
	if cmds := v.commands(); !slices.Contains(cmds, "load-cert") {
		t.Errorf("unchecked, another node's OU=GRE=: commands %q, want it loaded", cmds)
	}
}

// TestCredentialWatchSkipsRefused: a set a reload loaded and rolled back
// is left alone by the watch until its files change again (the reload
// answered that nothing changed); then it is loaded.
func TestCredentialWatchSkipsRefused(t *testing.T) {
	f := newCredFiles(t)
	f.write(spokeDN, time.Time{}, time.Time{})
	m, v, _ := watchManager(t, f, false)
	ctx := context.Background()
	before := m.Credentials()
	f.write(spokeDN, time.Time{}, time.Time{})
	next, err := m.ReadCredentials()
	if err != nil {
		t.Fatal(err)
	}
	m.CredentialsRefused(next)
	for range 3 {
		m.reloadCredsIfChanged(ctx)
	}
	if cmds := v.commands(); len(cmds) != 0 || !m.Credentials().Same(before) {
		t.Fatalf("the refused set: charon was sent %q", cmds)
	}
	f.touch()
	m.reloadCredsIfChanged(ctx)
	if cmds := v.commands(); !slices.Contains(cmds, "load-cert") || !m.Credentials().Same(next) {
		t.Errorf("the files changed again: commands %q, want the set loaded", cmds)
	}
}
