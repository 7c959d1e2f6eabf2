// Package pki issues the certificates of a DMVPN: a CA and node
// certificates whose subject carries the Alpine guide's fields as
// separate organizational units (OU=GRE=<tunnel address>, OU=AS=<asn>,
// OU=NET=<prefix>), each its own RDN in the order given, as strongSwan's
// pki tool writes them. The lab and the tests use it.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Attribute OIDs of the DN strings ParseDN reads.
var oids = map[string]asn1.ObjectIdentifier{
	"C": {2, 5, 4, 6}, "ST": {2, 5, 4, 8}, "L": {2, 5, 4, 7}, "O": {2, 5, 4, 10},
	"OU": {2, 5, 4, 11}, "CN": {2, 5, 4, 3},
}

// ParseDN reads a DN written as strongSwan prints one: "C=FI, O=Example,
// OU=GRE=10.0.0.11, CN=spoke1", one RDN per "type=value", split on ", "
// and on the first "=". A value that holds ", " cannot be written this
// way; use RDN for it.
func ParseDN(s string) (pkix.RDNSequence, error) {
	var seq pkix.RDNSequence
	for _, part := range strings.Split(s, ", ") {
		k, v, ok := strings.Cut(part, "=")
		oid, known := oids[k]
		if !ok || !known || v == "" {
			return nil, fmt.Errorf("pki: DN part %q", part)
		}
		seq = append(seq, RDN(oid, v))
	}
	return seq, nil
}

// RDN returns a one-attribute RDN.
func RDN(oid asn1.ObjectIdentifier, value string) pkix.RelativeDistinguishedNameSET {
	return pkix.RelativeDistinguishedNameSET{{Type: oid, Value: value}}
}

// OU is the organizational unit OID.
var OU = oids["OU"]

// CA is a certificate authority.
type CA struct {
	Cert    *x509.Certificate
	Key     *ecdsa.PrivateKey
	CertPEM []byte
	// CRLURLs, when set, are the CRL distribution points named by the
	// certificates Issue signs from then on.
	CRLURLs []string
}

// NewCA makes a self-signed ECDSA P-256 CA valid for ten years.
func NewCA(dn string) (*CA, error) {
	subj, err := ParseDN(dn)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	raw, err := asn1.Marshal(subj)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(), RawSubject: raw,
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(10, 0, 0),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

// Issued is a node certificate with its key, in PEM.
type Issued struct {
	CertPEM, KeyPEM []byte
	Cert            *x509.Certificate
}

// Issue signs a certificate for subject, valid from notBefore to
// notAfter (zero values: an hour ago to a year from now).
func (ca *CA) Issue(subject pkix.RDNSequence, notBefore, notAfter time.Time) (*Issued, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	raw, err := asn1.Marshal(subject)
	if err != nil {
		return nil, err
	}
	if notBefore.IsZero() {
		notBefore = time.Now().Add(-time.Hour)
	}
	if notAfter.IsZero() {
		notAfter = time.Now().AddDate(1, 0, 0)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), RawSubject: raw, NotBefore: notBefore, NotAfter: notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		CRLDistributionPoints: ca.CRLURLs,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	kd, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &Issued{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}),
		Cert:    cert,
	}, nil
}

// IssueDN is Issue with the subject as a DN string.
func (ca *CA) IssueDN(dn string) (*Issued, error) {
	subj, err := ParseDN(dn)
	if err != nil {
		return nil, err
	}
	return ca.Issue(subj, time.Time{}, time.Time{})
}

// Write stores the certificate and key as dir/name.crt and dir/name.key
// (mode 0600 for the key).
func (is *Issued) Write(dir, name string) (certPath, keyPath string, err error) {
	certPath, keyPath = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	err = errors.Join(os.WriteFile(certPath, is.CertPEM, 0o644), os.WriteFile(keyPath, is.KeyPEM, 0o600))
	return certPath, keyPath, err
}

// WriteCA stores the CA certificate as dir/name.crt.
func (ca *CA) WriteCA(dir, name string) (string, error) {
	p := filepath.Join(dir, name+".crt")
	return p, os.WriteFile(p, ca.CertPEM, 0o644)
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 63))
	return n
}

// ParseDNOID returns the OID of a DN attribute name (C, ST, L, O, OU, CN).
func ParseDNOID(name string) asn1.ObjectIdentifier { return oids[name] }

// WriteSet makes a CA and writes it as dir/ca.crt, and for each node
// name a certificate with the given DN, valid from an hour ago for a
// year, as dir/NAME.crt and dir/NAME.key: the layout of the examples
// (/etc/dmvpn/pki/) and the lab.
func WriteSet(dir string, dns map[string]string) (*CA, error) {
	ca, err := NewCA("C=FI, O=Example, CN=Example DMVPN CA")
	if err != nil {
		return nil, err
	}
	if _, err := ca.WriteCA(dir, "ca"); err != nil {
		return nil, err
	}
	for name, dn := range dns {
		is, err := ca.IssueDN(dn)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if _, _, err := is.Write(dir, name); err != nil {
			return nil, err
		}
	}
	return ca, nil
}
