package ipsec

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"slices"
	"time"
)

// CRLInfo describes a certificate revocation list in force: who issued
// it, when, when the next one is due, how many certificates it revokes.
// Stale says its next update is past: a newer list should be in place.
type CRLInfo struct {
	File       string    `json:"file"`
	Issuer     string    `json:"issuer"`
	Number     string    `json:"number,omitempty"`
	ThisUpdate time.Time `json:"this_update"`
	NextUpdate time.Time `json:"next_update,omitzero"`
	Revoked    int       `json:"revoked"`
	Stale      bool      `json:"stale,omitempty"`
}

// crlSet is the CRLs read from the configured files (ipsec.crl), each
// verified against a CA certificate of the configuration.
type crlSet struct {
	lists  []*x509.RevocationList
	info   []CRLInfo
	pem    [][]byte // each list as PEM, for charon (load-cert X509_CRL)
	mtimes map[string]time.Time
	// revoked maps issuer (raw DER) and serial to the revocation.
	revoked map[string]revocation
}

// revocation is one revoked certificate of a CRL.
type revocation struct {
	serial *big.Int
	at     time.Time
	crl    *CRLInfo
}

// maxCRLFile bounds a CRL file read.
const maxCRLFile = 32 << 20

// errCRL wraps every problem of a CRL file.
var errCRL = errors.New("ipsec: CRL")

// readCRLs reads the CRL files (PEM "X509 CRL" blocks, or one DER list)
// and verifies each against the CA certificates cas (PEM): a list no CA
// of the configuration signed is an error, as is a file that holds none.
func readCRLs(files []string, cas []string) (*crlSet, error) {
	s := &crlSet{mtimes: map[string]time.Time{}, revoked: map[string]revocation{}}
	var issuers []*x509.Certificate
	for _, c := range cas {
		rest := []byte(c)
		for {
			var blk *pem.Block
			if blk, rest = pem.Decode(rest); blk == nil {
				break
			}
			if cert, err := x509.ParseCertificate(blk.Bytes); err == nil && blk.Type == "CERTIFICATE" {
				issuers = append(issuers, cert)
			}
		}
	}
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", errCRL, err)
		}
		s.mtimes[f] = st.ModTime()
		if st.Size() > maxCRLFile {
			return nil, fmt.Errorf("%w: %s: larger than %d bytes", errCRL, f, maxCRLFile)
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", errCRL, err)
		}
		var ders [][]byte
		if bytes.Contains(b, []byte("-----BEGIN")) {
			for rest := b; ; {
				var blk *pem.Block
				if blk, rest = pem.Decode(rest); blk == nil {
					break
				}
				if blk.Type == "X509 CRL" {
					ders = append(ders, blk.Bytes)
				}
			}
		} else {
			ders = [][]byte{b}
		}
		if len(ders) == 0 {
			return nil, fmt.Errorf("%w: %s holds no CRL", errCRL, f)
		}
		for _, der := range ders {
			if err := s.add(f, der, issuers); err != nil {
				return nil, err
			}
		}
	}
	return s, nil
}

// add verifies one list and takes it in.
func (s *crlSet) add(file string, der []byte, issuers []*x509.Certificate) error {
	l, err := x509.ParseRevocationList(der)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", errCRL, file, err)
	}
	var by *x509.Certificate
	for _, ca := range issuers {
		if bytes.Equal(ca.RawSubject, l.RawIssuer) && l.CheckSignatureFrom(ca) == nil {
			by = ca
			break
		}
	}
	if by == nil {
		return fmt.Errorf("%w: %s: not signed by a CA certificate of the configuration (issuer %s)", errCRL, file, l.Issuer)
	}
	issuer, err := renderRDNs(l.RawIssuer)
	if err != nil {
		issuer = l.Issuer.String()
	}
	info := CRLInfo{File: file, Issuer: issuer, ThisUpdate: l.ThisUpdate, NextUpdate: l.NextUpdate, Revoked: len(l.RevokedCertificateEntries)}
	if l.Number != nil {
		info.Number = l.Number.String()
	}
	s.lists = append(s.lists, l)
	s.info = append(s.info, info)
	s.pem = append(s.pem, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}))
	ip := &s.info[len(s.info)-1]
	for _, r := range l.RevokedCertificateEntries {
		k := revocationKey(l.RawIssuer, r.SerialNumber)
		// Of two lists of one issuer, the newer's revocations stand
		// beside the older's: a revocation is never taken back.
		s.revoked[k] = revocation{serial: r.SerialNumber, at: r.RevocationTime, crl: ip}
	}
	return nil
}

func revocationKey(issuer []byte, serial *big.Int) string {
	return string(issuer) + "|" + serial.Text(16)
}

// lookup returns the revocation of a certificate, if a list in force
// revokes it.
func (s *crlSet) lookup(c *x509.Certificate) (revocation, bool) {
	if s == nil || c == nil {
		return revocation{}, false
	}
	r, ok := s.revoked[revocationKey(c.RawIssuer, c.SerialNumber)]
	return r, ok
}

// changed reports whether a CRL file changed since it was read.
func (s *crlSet) changed() bool {
	for path, t := range s.mtimes {
		st, err := os.Stat(path)
		if err != nil || !st.ModTime().Equal(t) {
			return true
		}
	}
	return false
}

// infos returns the lists in force, marked stale when their next update
// is past.
func (s *crlSet) infos(now time.Time) []CRLInfo {
	if s == nil {
		return nil
	}
	out := slices.Clone(s.info)
	for i := range out {
		out[i].Stale = !out[i].NextUpdate.IsZero() && now.After(out[i].NextUpdate)
	}
	return out
}

// CheckCRLs reads CRL files and verifies each against the CA certificate
// files caFiles, as a node would at start: dmvpnd --check uses it.
func CheckCRLs(files, caFiles []string) error {
	var cas []string
	for _, f := range caFiles {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		cas = append(cas, string(b))
	}
	_, err := readCRLs(files, cas)
	return err
}
