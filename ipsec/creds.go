package ipsec

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"slices"
	"time"
)

// credSet is this node's credentials as read from the configured files
// and checked to belong together.
type credSet struct {
	cas     []string // PEM
	cert    string   // PEM
	key     string   // PEM
	mtimes  map[string]time.Time
	expires map[string]time.Time // subject → NotAfter of every loaded certificate
	own     CertInfo             // this node's certificate
	crls    *crlSet              // the CRLs in force (ipsec.crl); nil: none
}

// CertInfo describes a certificate: its subject as strongSwan prints it,
// serial (hex) and expiry.
type CertInfo struct {
	Subject  string    `json:"subject"`
	Serial   string    `json:"serial"`
	NotAfter time.Time `json:"not_after"`
}

// readCreds reads the credential files and checks them as dmvpnd
// --check does (CheckCredentials): they hold what they should and belong
// together (the key is the certificate's, the CA signed it), the
// certificate's OU=GRE= is the node's tunnel address, none is expired or
// not yet valid (a certificate expiring soon is a warning and loads). With
// cfg.UncheckedCredentials only what charon needs to use them is checked.
// The modification times are taken before the contents, so a file
// replaced while it is read is read again on the next look.
func readCreds(cfg Config, hub bool) (*credSet, error) {
	cs := &credSet{mtimes: map[string]time.Time{}, expires: map[string]time.Time{}}
	read := func(path string) pemFile {
		st, err := os.Stat(path)
		if err != nil {
			return pemFile{name: path, err: err}
		}
		cs.mtimes[path] = st.ModTime()
		return readFile(path)
	}
	caFiles := make([]pemFile, len(cfg.CACerts))
	for i, f := range cfg.CACerts {
		caFiles[i] = read(f)
	}
	certFile, keyFile := read(cfg.Cert), read(cfg.Key)
	chk := CredentialCheck{CACerts: cfg.CACerts, Cert: cfg.Cert, Key: cfg.Key, Tunnel: cfg.Tunnel, Hub: hub,
		ConsistencyOnly: cfg.UncheckedCredentials}
	if err := credentialErrors(checkFiles(chk, caFiles, certFile, keyFile)); err != nil {
		return nil, err
	}
	for _, f := range caFiles {
		if err := cs.noteExpiry(string(f.data)); err != nil {
			return nil, fmt.Errorf("ipsec: %s: %w", f.name, err)
		}
		cs.cas = append(cs.cas, string(f.data))
	}
	cs.cert, cs.key = string(certFile.data), string(keyFile.data)
	if err := cs.noteExpiry(cs.cert); err != nil {
		return nil, fmt.Errorf("ipsec: %s: %w", cfg.Cert, err)
	}
	certs, _, _ := certFile.parse()
	cs.own = CertInfo{Subject: subjectOf(certs[0]), Serial: certs[0].SerialNumber.Text(16), NotAfter: certs[0].NotAfter}
	if len(cfg.CRL) > 0 {
		crls, err := readCRLs(cfg.CRL, cs.cas)
		if err != nil {
			return nil, err
		}
		cs.crls = crls
	}
	return cs, nil
}

// noteExpiry records the expiry of every certificate in a PEM blob.
func (cs *credSet) noteExpiry(p string) error {
	rest := []byte(p)
	n := 0
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return err
		}
		cs.expires[subjectOf(c)] = c.NotAfter
		n++
	}
	if n == 0 {
		return fmt.Errorf("no PEM certificate")
	}
	return nil
}

// sameContents reports whether two sets hold the same PEM data.
func (cs *credSet) sameContents(o *credSet) bool {
	return o != nil && cs.cert == o.cert && cs.key == o.key && slices.Equal(cs.cas, o.cas) && sameCRLs(cs.crls, o.crls)
}

// sameCRLs reports whether two sets of CRLs hold the same lists.
func sameCRLs(a, b *crlSet) bool {
	if a == nil || b == nil {
		return a == b
	}
	return slices.EqualFunc(a.pem, b.pem, func(x, y []byte) bool { return string(x) == string(y) })
}

// changed reports whether any credential file changed since it was read.
func (cs *credSet) changed() bool {
	for path, t := range cs.mtimes {
		st, err := os.Stat(path)
		if err != nil || !st.ModTime().Equal(t) {
			return true
		}
	}
	return false
}

// loadCreds hands the credentials to charon.
func loadCreds(ctx context.Context, c *viciConn, cs *credSet) error {
	for _, ca := range cs.cas {
		if _, err := c.call(ctx, 5*time.Second, "load-cert", msg("type", "X509", "flag", "CA", "data", ca)); err != nil {
			return err
		}
	}
	if _, err := c.call(ctx, 5*time.Second, "load-cert", msg("type", "X509", "flag", "NONE", "data", cs.cert)); err != nil {
		return err
	}
	if _, err := c.call(ctx, 5*time.Second, "load-key", msg("type", "any", "data", cs.key)); err != nil {
		return err
	}
	return loadCRLs(ctx, c, cs.crls)
}

// loadCRLs hands the CRLs to charon, which then refuses the certificates
// they revoke when a peer authenticates.
func loadCRLs(ctx context.Context, c *viciConn, crls *crlSet) error {
	if crls == nil {
		return nil
	}
	for _, p := range crls.pem {
		if _, err := c.call(ctx, 5*time.Second, "load-cert", msg("type", "X509_CRL", "data", string(p))); err != nil {
			return fmt.Errorf("loading a CRL: %w", err)
		}
	}
	// charon's credential manager keeps the CRLs it has verified in its
	// cache and its revocation check takes the first valid one it finds
	// there: without a flush the list a new one replaced still decides
	// (a revoked peer's certificate status was "good" under CRL 2 until
	// CRL 1's next update).
	if _, err := c.call(ctx, 5*time.Second, "flush-certs", msg("type", "X509_CRL")); err != nil {
		return fmt.Errorf("flushing charon's cached CRLs: %w", err)
	}
	return nil
}
