package ipsec

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Identity is what a peer's certificate says about it: its subject and
// serial, and the DMVPN fields of its organizational units, as the Alpine
// guide's PKI writes them: OU=GRE=<tunnel address>, OU=AS=<asn>,
// OU=NET=<prefix> (several allowed).
type Identity struct {
	Subject  string
	Serial   string
	NotAfter time.Time
	GRE      []netip.Addr
	AS       []uint32
	NET      []netip.Prefix

	cert *x509.Certificate // what it was read from (revocation)
}

// Attrs returns the fields as the NHRP engine keeps them with a binding.
func (id *Identity) Attrs() map[string][]string {
	m := map[string][]string{}
	for _, a := range id.GRE {
		m["GRE"] = append(m["GRE"], a.String())
	}
	for _, a := range id.AS {
		m["AS"] = append(m["AS"], strconv.FormatUint(uint64(a), 10))
	}
	for _, n := range id.NET {
		m["NET"] = append(m["NET"], n.String())
	}
	return m
}

// ErrAmbiguous is wrapped by identity errors that fail closed: anything a
// policy cannot read without doubt.
var ErrAmbiguous = errors.New("ambiguous certificate identity")

var oidOU = asn1.ObjectIdentifier{2, 5, 4, 11}

// ParseIdentity reads the DMVPN fields from a DER certificate, exactly,
// from its ASN.1 subject. It refuses (ErrAmbiguous) an organizational unit
// value that holds ", " or a second "=" (it would read differently once
// rendered as a string), one that is not printable ASCII, a field that
// does not parse, and a certificate with more than one OU=GRE=.
func ParseIdentity(der []byte) (*Identity, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ipsec: certificate: %w", err)
	}
	var rdns pkix.RDNSequence
	if rest, err := asn1.Unmarshal(cert.RawSubject, &rdns); err != nil || len(rest) > 0 {
		return nil, fmt.Errorf("ipsec: certificate subject: %w", ErrAmbiguous)
	}
	id := &Identity{Subject: rdns.String(), Serial: cert.SerialNumber.Text(16), NotAfter: cert.NotAfter, cert: cert}
	for _, rdn := range rdns {
		for _, atv := range rdn {
			v, ok := atv.Value.(string)
			if !ok {
				return nil, fmt.Errorf("ipsec: subject attribute %v is not a string: %w", atv.Type, ErrAmbiguous)
			}
			if !printableASCII(v) {
				return nil, fmt.Errorf("ipsec: subject attribute %v %q is not printable ASCII: %w", atv.Type, v, ErrAmbiguous)
			}
			if !atv.Type.Equal(oidOU) {
				continue
			}
			if err := id.addOU(v); err != nil {
				return nil, err
			}
		}
	}
	if len(id.GRE) > 1 {
		return nil, fmt.Errorf("ipsec: %d OU=GRE= fields: %w", len(id.GRE), ErrAmbiguous)
	}
	return id, nil
}

// addOU reads one organizational unit value.
func (id *Identity) addOU(v string) error {
	if strings.Contains(v, ", ") || strings.Contains(v, ",") {
		return fmt.Errorf("ipsec: OU %q holds a comma: %w", v, ErrAmbiguous)
	}
	key, val, ok := strings.Cut(v, "=")
	if !ok {
		return nil // an ordinary OU, not a DMVPN field
	}
	if strings.Contains(val, "=") {
		return fmt.Errorf("ipsec: OU %q holds a second '=': %w", v, ErrAmbiguous)
	}
	switch key {
	case "GRE":
		a, err := netip.ParseAddr(val)
		if err != nil {
			return fmt.Errorf("ipsec: OU=GRE=%s is not an address: %w", val, ErrAmbiguous)
		}
		id.GRE = append(id.GRE, a)
	case "AS":
		n, err := strconv.ParseUint(val, 10, 32)
		if err != nil {
			return fmt.Errorf("ipsec: OU=AS=%s is not an AS number: %w", val, ErrAmbiguous)
		}
		id.AS = append(id.AS, uint32(n))
	case "NET":
		p, err := netip.ParsePrefix(val)
		if err != nil {
			return fmt.Errorf("ipsec: OU=NET=%s is not a prefix: %w", val, ErrAmbiguous)
		}
		id.NET = append(id.NET, p.Masked())
	}
	return nil
}

func printableASCII(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r > 0x7e {
			return false
		}
	}
	return true
}

// renderLikeCharon renders a DER subject the way strongSwan prints an
// identity (%Y): RDNs in encoding order, "type=value" joined by ", ",
// bytes outside printable ASCII as '?'. It is how a certificate is matched
// to the remote-id of an SA.
func renderLikeCharon(der []byte) (string, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return "", err
	}
	return renderRDNs(cert.RawSubject)
}

// renderRDNs renders a DER name (a subject, an issuer) as strongSwan
// prints an identity.
func renderRDNs(raw []byte) (string, error) {
	var rdns pkix.RDNSequence
	if _, err := asn1.Unmarshal(raw, &rdns); err != nil {
		return "", err
	}
	var parts []string
	for _, rdn := range rdns {
		for _, atv := range rdn {
			v, _ := atv.Value.(string)
			b := []byte(v)
			for i, c := range b {
				if c < 0x20 || c > 0x7e {
					b[i] = '?'
				}
			}
			parts = append(parts, attrName(atv.Type)+"="+string(b))
		}
	}
	return strings.Join(parts, ", "), nil
}

// attrName names a DN attribute as strongSwan does.
func attrName(t asn1.ObjectIdentifier) string {
	names := map[string]string{
		"2.5.4.3": "CN", "2.5.4.6": "C", "2.5.4.7": "L", "2.5.4.8": "ST", "2.5.4.10": "O",
		"2.5.4.11": "OU", "2.5.4.5": "SN", "2.5.4.4": "S", "2.5.4.42": "G", "2.5.4.12": "T",
		"2.5.4.43": "I", "2.5.4.46": "dnQualifier", "2.5.4.65": "pseudonym", "2.5.4.9": "street",
		"2.5.4.17": "postalCode", "1.2.840.113549.1.9.1": "E", "0.9.2342.19200300.100.1.25": "DC",
		"0.9.2342.19200300.100.1.1": "UID",
	}
	if n, ok := names[t.String()]; ok {
		return n
	}
	return t.String()
}
