package ipsec

import (
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"
)

// ExpiryWarning is how long before a certificate expires it is warned
// about (dmvpnd --check, the log, show dmvpn).
const ExpiryWarning = 30 * 24 * time.Hour

// CredentialProblem is one problem of a node's credential files: Field is
// "ca", "cert" or "key" (Index the CA file's position for "ca"); a
// Warning does not stop the node.
type CredentialProblem struct {
	Field   string
	Index   int
	Msg     string
	Warning bool
}

// Error returns "field: message".
func (p CredentialProblem) Error() string { return p.Field + ": " + p.Msg }

// CredentialCheck is what CheckCredentials needs to know about the node.
type CredentialCheck struct {
	CACerts   []string
	Cert, Key string
	// Tunnel is the node's tunnel address: its certificate's OU=GRE= must
	// be it. Hub says the node is a hub (spokes may check a hub by
	// hub_identity instead, so a hub's certificate without OU=GRE= is a
	// warning only).
	Tunnel netip.Addr
	Hub    bool
	// Now is the time the validity is checked at (zero: now).
	Now time.Time
	// ConsistencyOnly checks only that the files hold what they should
	// and belong together (what charon needs to load them): not the
	// validity dates, not OU=GRE=.
	ConsistencyOnly bool
}

// pemFile is one credential file as read.
type pemFile struct {
	name string
	data []byte
	err  error
}

func readFile(name string) pemFile {
	b, err := os.ReadFile(name)
	return pemFile{name: name, data: b, err: err}
}

// CheckCredentials reads the CA, certificate and key files and checks
// them together, before anything is loaded into charon: each file holds
// what its field names (a certificate given as the key, or the reverse, is
// named as such), the key is the certificate's, the certificate was
// signed by one of the CAs, its OU=GRE= is the node's tunnel address, and
// neither it nor a CA is expired or not yet valid. A certificate or CA
// that expires within ExpiryWarning is a warning.
func CheckCredentials(c CredentialCheck) []CredentialProblem {
	cas := make([]pemFile, len(c.CACerts))
	for i, f := range c.CACerts {
		cas[i] = readFile(f)
	}
	return checkFiles(c, cas, readFile(c.Cert), readFile(c.Key))
}

// checkFiles checks credentials already read (so that what is checked is
// what is loaded).
func checkFiles(c CredentialCheck, caFiles []pemFile, certFile, keyFile pemFile) []CredentialProblem {
	now := c.Now
	if now.IsZero() {
		now = time.Now()
	}
	var out []CredentialProblem
	bad := func(field string, i int, warn bool, f string, a ...any) {
		out = append(out, CredentialProblem{Field: field, Index: i, Msg: fmt.Sprintf(f, a...), Warning: warn})
	}
	var cas []*x509.Certificate
	for i, pf := range caFiles {
		f := pf.name
		certs, keys, err := pf.parse()
		switch {
		case err != nil:
			bad("ca", i, false, "%v", err)
			continue
		case len(certs) == 0 && len(keys) > 0:
			bad("ca", i, false, "%s holds a private key, not a CA certificate", f)
			continue
		case len(certs) == 0:
			bad("ca", i, false, "%s holds no PEM certificate", f)
			continue
		}
		for _, ca := range certs {
			if !ca.IsCA {
				bad("ca", i, false, "%s: %s is not a CA certificate (no CA basic constraint)", f, subjectOf(ca))
				continue
			}
			if !c.ConsistencyOnly {
				validity(ca, now, func(warn bool, msg string) { bad("ca", i, warn, "%s: CA %s %s", f, subjectOf(ca), msg) })
			}
			cas = append(cas, ca)
		}
	}

	certs, keys, err := certFile.parse()
	var leaf *x509.Certificate
	switch {
	case err != nil:
		bad("cert", 0, false, "%v", err)
	case len(certs) == 0 && len(keys) > 0:
		bad("cert", 0, false, "%s holds a private key, not a certificate (is it the key?)", c.Cert)
	case len(certs) == 0:
		bad("cert", 0, false, "%s holds no PEM certificate", c.Cert)
	default:
		leaf = certs[0]
		if len(keys) > 0 {
			bad("cert", 0, false, "%s holds a private key as well: keep the key in its own file (mode 0600)", c.Cert)
		}
		if !c.ConsistencyOnly {
			validity(leaf, now, func(warn bool, msg string) { bad("cert", 0, warn, "%s %s", subjectOf(leaf), msg) })
		}
		if len(cas) > 0 && !signedBy(leaf, certs[1:], cas) {
			bad("cert", 0, false, "%s was not signed by ipsec.ca (its issuer is %s)", subjectOf(leaf), issuerOf(leaf))
		}
		if !c.ConsistencyOnly {
			checkGRE(leaf, c, func(warn bool, msg string) { bad("cert", 0, warn, "%s", msg) })
		}
	}

	kcerts, kkeys, err := keyFile.parse()
	switch {
	case err != nil:
		bad("key", 0, false, "%v", err)
	case len(kkeys) == 0 && len(kcerts) > 0:
		bad("key", 0, false, "%s holds a certificate, not a private key (is it the certificate?)", c.Key)
	case len(kkeys) == 0:
		bad("key", 0, false, "%s holds no PEM private key", c.Key)
	case leaf != nil:
		if !keyMatches(kkeys[0], leaf) {
			bad("key", 0, false, "%s is not the key of ipsec.cert (%s)", c.Key, subjectOf(leaf))
		}
	}
	return out
}

// validity reports a certificate expired or not yet valid at now, and a
// warning when it expires within ExpiryWarning.
func validity(c *x509.Certificate, now time.Time, report func(warn bool, msg string)) {
	switch {
	case now.Before(c.NotBefore):
		report(false, "is not valid before "+c.NotBefore.UTC().Format(time.RFC3339))
	case now.After(c.NotAfter):
		report(false, "expired on "+c.NotAfter.UTC().Format(time.RFC3339))
	case c.NotAfter.Sub(now) < ExpiryWarning:
		report(true, fmt.Sprintf("expires in %s (%s)", DaysLeft(c.NotAfter, now), c.NotAfter.UTC().Format(time.RFC3339)))
	}
}

// DaysLeft words the time until t as whole days ("12 days", "less than a
// day").
func DaysLeft(t, now time.Time) string {
	d := int(t.Sub(now) / (24 * time.Hour))
	switch {
	case t.Before(now):
		return "0 days (expired)"
	case d == 0:
		return "less than a day"
	case d == 1:
		return "1 day"
	}
	return fmt.Sprintf("%d days", d)
}

// signedBy reports whether leaf chains to one of the CAs, directly or
// through the intermediates given with it. Validity is checked apart.
func signedBy(leaf *x509.Certificate, intermediates, cas []*x509.Certificate) bool {
	for _, ca := range cas {
		if leaf.CheckSignatureFrom(ca) == nil {
			return true
		}
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, ca := range cas {
		roots.AddCert(ca)
	}
	for _, c := range intermediates {
		inter.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: leaf.NotBefore.Add(time.Second),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err == nil
}

// checkGRE checks the certificate's OU=GRE= against the tunnel address.
func checkGRE(leaf *x509.Certificate, c CredentialCheck, report func(warn bool, msg string)) {
	id, err := ParseIdentity(leaf.Raw)
	if err != nil {
		report(false, fmt.Sprintf("%s: %v (peers refuse it)", subjectOf(leaf), strings.TrimPrefix(err.Error(), "ipsec: ")))
		return
	}
	switch {
	case len(id.GRE) == 0 && c.Hub:
		report(true, fmt.Sprintf("%s has no OU=GRE=: spokes refuse it unless their hub_identity names it", subjectOf(leaf)))
	case len(id.GRE) == 0:
		report(false, fmt.Sprintf("%s has no OU=GRE= (every hub would refuse it)", subjectOf(leaf)))
	case c.Tunnel.IsValid() && id.GRE[0] != c.Tunnel:
		report(false, fmt.Sprintf("OU=GRE=%s but tunnel.address is %s", id.GRE[0], c.Tunnel))
	}
}

// keyMatches reports whether a private key is the certificate's.
func keyMatches(k crypto.Signer, c *x509.Certificate) bool {
	pub, ok := k.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(c.PublicKey)
}

// parse reads the certificates and private keys of a file read.
func (f pemFile) parse() ([]*x509.Certificate, []crypto.Signer, error) {
	if f.err != nil {
		return nil, nil, f.err
	}
	return parsePEM(f.name, f.data)
}

// parsePEM reads the certificates and private keys of PEM data; any
// block that does not parse is an error.
func parsePEM(name string, b []byte) ([]*x509.Certificate, []crypto.Signer, error) {
	var certs []*x509.Certificate
	var keys []crypto.Signer
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		switch {
		case blk.Type == "CERTIFICATE":
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				return nil, nil, fmt.Errorf("%s: a certificate that does not parse: %w", name, err)
			}
			certs = append(certs, c)
		case blk.Type == "ENCRYPTED PRIVATE KEY" || blk.Headers["Proc-Type"] != "":
			return nil, nil, fmt.Errorf("%s: an encrypted private key (dmvpnd loads keys without a passphrase)", name)
		case strings.HasSuffix(blk.Type, "PRIVATE KEY"):
			k, err := parseKey(blk)
			if err != nil {
				return nil, nil, fmt.Errorf("%s: %w", name, err)
			}
			keys = append(keys, k)
		}
	}
	return certs, keys, nil
}

// parseKey reads a PKCS#8, SEC 1 (EC) or PKCS#1 (RSA) private key.
func parseKey(blk *pem.Block) (crypto.Signer, error) {
	var k any
	var err error
	switch blk.Type {
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(blk.Bytes)
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
	default:
		k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
	}
	if err != nil {
		return nil, fmt.Errorf("a %s that does not parse: %w", strings.ToLower(blk.Type), err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("a %s of an unsupported kind", strings.ToLower(blk.Type))
	}
	return s, nil
}

// credentialErrors returns the problems that are not warnings as one
// error, or nil.
func credentialErrors(ps []CredentialProblem) error {
	var msgs []string
	for _, p := range ps {
		if !p.Warning {
			msgs = append(msgs, p.Error())
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrConfig, strings.Join(msgs, "; "))
}

// subjectOf renders a certificate's subject as strongSwan prints it
// ("C=FI, O=Example, OU=GRE=172.16.1.1, CN=spoke1").
func subjectOf(c *x509.Certificate) string {
	if s, err := renderLikeCharon(c.Raw); err == nil {
		return s
	}
	return c.Subject.String()
}

// issuerOf renders a certificate's issuer the same way.
func issuerOf(c *x509.Certificate) string {
	var rdns pkix.RDNSequence
	if _, err := asn1.Unmarshal(c.RawIssuer, &rdns); err != nil {
		return c.Issuer.String()
	}
	parts := make([]string, 0, len(rdns))
	for _, rdn := range rdns {
		for _, atv := range rdn {
			parts = append(parts, fmt.Sprintf("%s=%v", attrName(atv.Type), atv.Value))
		}
	}
	return strings.Join(parts, ", ")
}
