package ipsec

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"time"
)

// credSet is this node's credentials as loaded from the configured files.
type credSet struct {
	cas     []string // PEM
	cert    string   // PEM
	key     string   // PEM
	mtimes  map[string]time.Time
	expires map[string]time.Time // subject → NotAfter of every loaded certificate
}

// readCreds reads the credential files.
func readCreds(cfg Config) (*credSet, error) {
	cs := &credSet{mtimes: map[string]time.Time{}, expires: map[string]time.Time{}}
	read := func(path string) (string, error) {
		st, err := os.Stat(path)
		if err != nil {
			return "", fmt.Errorf("ipsec: %w", err)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("ipsec: %w", err)
		}
		cs.mtimes[path] = st.ModTime()
		return string(b), nil
	}
	for _, f := range cfg.CACerts {
		s, err := read(f)
		if err != nil {
			return nil, err
		}
		if err := cs.noteExpiry(s); err != nil {
			return nil, fmt.Errorf("ipsec: %s: %w", f, err)
		}
		cs.cas = append(cs.cas, s)
	}
	var err error
	if cs.cert, err = read(cfg.Cert); err != nil {
		return nil, err
	}
	if err := cs.noteExpiry(cs.cert); err != nil {
		return nil, fmt.Errorf("ipsec: %s: %w", cfg.Cert, err)
	}
	if cs.key, err = read(cfg.Key); err != nil {
		return nil, err
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
		cs.expires[c.Subject.String()] = c.NotAfter
		n++
	}
	if n == 0 {
		return fmt.Errorf("no PEM certificate")
	}
	return nil
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
	return nil
}
