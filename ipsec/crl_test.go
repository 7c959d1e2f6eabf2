package ipsec

import (
	"context"
	"encoding/pem"
	"errors"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/opendmvpn/dmvpn/nhrp"
)

func writeFile(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestReadCRLs: a list signed by a CA of the configuration is read (PEM
// or DER) and revokes what it lists; one signed by another CA, or that is
// not a list, is refused; a list past its next update is stale.
func TestReadCRLs(t *testing.T) {
	dir := t.TempDir()
	ca, other := newCA(t), newCA(t)
	spoke, err := ca.IssueDN("C=FI, O=Example, OU=GRE=172.16.1.1, CN=spoke1")
	if err != nil {
		t.Fatal(err)
	}
	kept, _ := ca.IssueDN("C=FI, O=Example, OU=GRE=172.16.2.1, CN=spoke2")
	list, err := ca.CRL(3, []*big.Int{spoke.Cert.SerialNumber}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cas := []string{string(ca.CertPEM)}
	s, err := readCRLs([]string{writeFile(t, dir, "ca.crl", list)}, cas)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.lookup(spoke.Cert); !ok {
		t.Error("the revoked certificate is not found revoked")
	}
	if _, ok := s.lookup(kept.Cert); ok {
		t.Error("a certificate the list does not name is found revoked")
	}
	infos := s.infos(time.Now())
	if len(infos) != 1 || infos[0].Number != "3" || infos[0].Revoked != 1 || infos[0].Stale || !strings.Contains(infos[0].Issuer, "CN=Example DMVPN CA") {
		t.Errorf("CRL info %+v", infos)
	}
	if st := s.infos(time.Now().Add(2 * time.Hour)); !st[0].Stale {
		t.Error("a list past its next update is not stale")
	}
	blk, _ := pem.Decode(list)
	if _, err := readCRLs([]string{writeFile(t, dir, "ca.der", blk.Bytes)}, cas); err != nil {
		t.Errorf("a DER list: %v", err)
	}
	foreign, _ := other.CRL(1, nil, time.Hour)
	if _, err := readCRLs([]string{writeFile(t, dir, "other.crl", foreign)}, cas); !errors.Is(err, errCRL) || !strings.Contains(err.Error(), "not signed by a CA") {
		t.Errorf("a list of another CA: %v", err)
	}
	if _, err := readCRLs([]string{writeFile(t, dir, "cert.crl", spoke.CertPEM)}, cas); !errors.Is(err, errCRL) {
		t.Errorf("a certificate as a CRL: %v", err)
	}
	if err := CheckCRLs([]string{filepath.Join(dir, "ca.crl")}, []string{writeFile(t, dir, "ca.crt", ca.CertPEM)}); err != nil {
		t.Errorf("CheckCRLs: %v", err)
	}
}

// TestRevokedRefusedAndEnded: with a list revoking spoke1's certificate in
// force, every decision by certificate refuses it (kind
// certificate_revoked), and the sweep a new list triggers ends its SA,
// audits it with the serial and tells the engine.
func TestRevokedRefusedAndEnded(t *testing.T) {
	ca := newCA(t)
	nbma := netip.MustParseAddr("198.51.100.1")
	spoke, err := ca.IssueDN("C=FI, O=Example, OU=GRE=172.16.1.1, CN=spoke1")
	if err != nil {
		t.Fatal(err)
	}
	m := verifyManager(t)
	core, audit := observer.New(zap.InfoLevel)
	m.audit = zap.New(core)
	var revoked []string
	m.hooks.Revoked = func(n netip.Addr, reason string) { revoked = append(revoked, n.String()+" "+reason) }
	addPeer(t, m, "9", nbma, spoke.Cert.Raw, false)
	m.verified["9"] = netip.MustParseAddr("172.16.1.1")
	ctx := context.Background()
	claim := nhrp.Claim{NBMA: nbma, Proto: netip.MustParseAddr("172.16.1.1")}
	if v, kind, _, _ := m.verify(ctx, claim); v.Code != 0 {
		t.Fatalf("before the list: refused (%s) %s", kind, v.Reason)
	}
	list, err := ca.CRL(2, []*big.Int{spoke.Cert.SerialNumber}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	crls, err := readCRLs([]string{writeFile(t, t.TempDir(), "ca.crl", list)}, []string{string(ca.CertPEM)})
	if err != nil {
		t.Fatal(err)
	}
	m.creds = &credSet{crls: crls}
	if v, kind, _, _ := m.verify(ctx, claim); v.Code == 0 || kind != RefusedRevoked || !strings.Contains(v.Reason, spoke.Cert.SerialNumber.Text(16)) {
		t.Errorf("a revoked certificate's claim: code %d kind %q %q", v.Code, kind, v.Reason)
	}
	// An SA checked before the list came would pass checkPeer by its
	// record: the sweep below ends it. One not yet checked is refused.
	delete(m.verified, "9")
	if err := m.checkPeer(ctx, nhrp.Peer{NBMA: nbma, Proto: claim.Proto, Role: "shortcut"}); !errors.Is(err, nhrp.ErrIdentity) {
		t.Errorf("a revoked shortcut peer: %v", err)
	}
	m.verified["9"] = claim.Proto
	m.revokeSweep(ctx)
	if len(revoked) != 1 || !strings.HasPrefix(revoked[0], "198.51.100.1 certificate revoked (serial "+spoke.Cert.SerialNumber.Text(16)) {
		t.Errorf("the engine was told %q", revoked)
	}
	if _, ok := m.verified["9"]; ok {
		t.Error("the revoked peer's SA still counts as verified")
	}
	lines := audit.FilterMessage("certificate revoked: SA ended").All()
	if len(lines) != 1 || lines[0].ContextMap()["serial"] != spoke.Cert.SerialNumber.Text(16) || lines[0].ContextMap()["nbma"] != "198.51.100.1" {
		t.Errorf("audit %+v", lines)
	}
	if n := m.Stats().Revoked; n != 1 {
		t.Errorf("%d SAs counted ended by revocation, want 1", n)
	}
}
