package lab

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/opendmvpn/dmvpn/internal/pki"
	"github.com/opendmvpn/dmvpn/lab/testbed"
)

// caDN is the subject of the lab's CA.
const caDN = "C=FI, O=dmvpn-lab, CN=dmvpn-lab CA"

// subject is a node certificate's subject, with the Alpine guide's
// fields, one RDN each: OU=GRE=<tunnel address>, OU=AS=<asn> and, for a
// spoke, OU=NET=<prefix> per LAN.
func (n Node) subject() string {
	parts := []string{"C=FI", "O=dmvpn-lab", "OU=GRE=" + n.certGRE().String()}
	if n.AS != 0 {
		parts = append(parts, fmt.Sprintf("OU=AS=%d", n.AS))
	}
	if n.Site.Kind == testbed.Spoke && n.Site.LAN.IsValid() {
		parts = append(parts, "OU=NET="+n.Site.LAN.Masked().String())
	}
	return strings.Join(append(parts, "CN="+n.Site.Name), ", ")
}

// credentials are a node's PEM files.
type credentials struct {
	CA, Cert, Key, CRL string
	Subject            string
}

// crlLifetime is how long the lab's CRLs hold before their next update.
const crlLifetime = 7 * 24 * time.Hour

// writePKI makes the lab's CA and a certificate per hub and spoke in dir
// (keys mode 0600), and the CA's first CRL (number 1, nothing revoked),
// which every node's file names. The CA's key is kept (mode 0600) for
// dmvpn-lab revoke to sign the next list.
func writePKI(dir string, t Topology) (map[string]credentials, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	ca, err := pki.NewCA(caDN)
	if err != nil {
		return nil, err
	}
	caFile, err := ca.WriteCA(dir, "ca")
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	if _, err := ca.WriteKey(dir, "ca"); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	crl, err := ca.CRL(1, nil, crlLifetime)
	if err != nil {
		return nil, err
	}
	crlFile := filepath.Join(dir, "ca.crl")
	if err := os.WriteFile(crlFile, crl, 0o644); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	out := map[string]credentials{}
	for _, n := range t.Nodes {
		is, err := ca.IssueDN(n.subject())
		if err != nil {
			return nil, fmt.Errorf("pki: %s: %w", n.Site.Name, err)
		}
		cert, key, err := is.Write(dir, n.Site.Name)
		if err != nil {
			return nil, fmt.Errorf("pki: %w", err)
		}
		out[n.Site.Name] = credentials{CA: caFile, Cert: cert, Key: key, CRL: crlFile, Subject: n.subject()}
	}
	return out, nil
}

// ipsecSection is a node's ipsec section: ESP in mode (userspace or
// kernel) with a charon of its own (files in stateDir), fast dead-peer
// detection as in the integration tests, the registration audit stream in
// auditLog, and the lab CA's CRL.
func ipsecSection(c credentials, mode, stateDir, auditLog string) string {
	return fmt.Sprintf(`ipsec:
  mode: %s
  ca: %s
  cert: %s
  key: %s
  charon: managed
  state_dir: %s
  dpd_delay: 1s
  retransmit_timeout: 500ms
  retransmit_tries: 3
  audit_log: %s
  crl: %s
`, mode, c.CA, c.Cert, c.Key, stateDir, auditLog, c.CRL)
}

// revokeCert signs the lab's next CRL, revoking the certificate of node
// besides every one the list in force revokes, and puts it in place of
// dir/ca.crl at once (written aside, then renamed): the nodes read it
// within a second. It returns the certificate's serial and the list's
// number.
func revokeCert(dir, node string) (serial string, number int64, err error) {
	ca, err := pki.LoadCA(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"))
	if err != nil {
		return "", 0, fmt.Errorf("the lab's CA: %w", err)
	}
	b, err := os.ReadFile(filepath.Join(dir, node+".crt"))
	if err != nil {
		return "", 0, fmt.Errorf("%s's certificate: %w", node, err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return "", 0, fmt.Errorf("%s's certificate is not PEM", node)
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return "", 0, err
	}
	crlFile := filepath.Join(dir, "ca.crl")
	last, serials, err := pki.ReadCRL(crlFile)
	if err != nil {
		return "", 0, err
	}
	for _, s := range serials {
		if s.Cmp(cert.SerialNumber) == 0 {
			return cert.SerialNumber.Text(16), last, fmt.Errorf("%s's certificate (serial %s) is revoked already (CRL number %d)", node, cert.SerialNumber.Text(16), last)
		}
	}
	list, err := ca.CRL(last+1, append(serials, new(big.Int).Set(cert.SerialNumber)), crlLifetime)
	if err != nil {
		return "", 0, err
	}
	tmp := crlFile + ".new"
	if err := os.WriteFile(tmp, list, 0o644); err != nil {
		return "", 0, err
	}
	if err := os.Rename(tmp, crlFile); err != nil {
		return "", 0, err
	}
	return cert.SerialNumber.Text(16), last + 1, nil
}
