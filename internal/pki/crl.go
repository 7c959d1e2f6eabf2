package pki

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// CRL signs a certificate revocation list numbered number that revokes
// the certificates with the given serials, issued now and due again
// after lifetime, and returns it in PEM.
func (ca *CA) CRL(number int64, serials []*big.Int, lifetime time.Duration) ([]byte, error) {
	now := time.Now()
	tmpl := &x509.RevocationList{Number: big.NewInt(number), ThisUpdate: now.Add(-time.Minute), NextUpdate: now.Add(lifetime)}
	for _, s := range serials {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries,
			x509.RevocationListEntry{SerialNumber: s, RevocationTime: now.Add(-time.Minute)})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.Cert, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("pki: CRL: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), nil
}

// WriteKey stores the CA's key as dir/name.key (mode 0600): a CA kept to
// issue CRLs later.
func (ca *CA) WriteKey(dir, name string) (string, error) {
	kd, err := x509.MarshalECPrivateKey(ca.Key)
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, name+".key")
	return p, os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}), 0o600)
}

// LoadCA reads a CA written by WriteCA and WriteKey.
func LoadCA(certPath, keyPath string) (*CA, error) {
	cb, err := os.ReadFile(certPath)
	if err != nil {
		return nil, err
	}
	kb, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, err
	}
	cblk, _ := pem.Decode(cb)
	kblk, _ := pem.Decode(kb)
	if cblk == nil || kblk == nil {
		return nil, errors.New("pki: the CA's certificate or key is not PEM")
	}
	cert, err := x509.ParseCertificate(cblk.Bytes)
	if err != nil {
		return nil, err
	}
	key, err := x509.ParseECPrivateKey(kblk.Bytes)
	if err != nil {
		return nil, err
	}
	if !key.PublicKey.Equal(cert.PublicKey.(*ecdsa.PublicKey)) {
		return nil, errors.New("pki: the key is not the CA certificate's")
	}
	return &CA{Cert: cert, Key: key, CertPEM: cb}, nil
}

// ReadCRL reads a PEM CRL: its number and the serials it revokes.
func ReadCRL(path string) (number int64, serials []*big.Int, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "X509 CRL" {
		return 0, nil, fmt.Errorf("pki: %s holds no PEM CRL", path)
	}
	l, err := x509.ParseRevocationList(blk.Bytes)
	if err != nil {
		return 0, nil, err
	}
	for _, r := range l.RevokedCertificateEntries {
		serials = append(serials, r.SerialNumber)
	}
	if l.Number != nil {
		number = l.Number.Int64()
	}
	return number, serials, nil
}
