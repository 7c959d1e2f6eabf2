package lab

import (
	"fmt"
	"os"
	"strings"

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
	CA, Cert, Key string
	Subject       string
}

// writePKI makes the lab's CA and a certificate per hub and spoke in dir
// (keys mode 0600). The CA's key is not kept: nothing is issued after up.
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
		out[n.Site.Name] = credentials{CA: caFile, Cert: cert, Key: key, Subject: n.subject()}
	}
	return out, nil
}

// ipsecSection is a node's ipsec section: userspace ESP with a charon of
// its own (files in stateDir), fast dead-peer detection as in the
// integration tests, and the registration audit stream in auditLog.
func ipsecSection(c credentials, stateDir, auditLog string) string {
	return fmt.Sprintf(`ipsec:
  mode: userspace
  ca: %s
  cert: %s
  key: %s
  charon: managed
  state_dir: %s
  dpd_delay: 1s
  retransmit_timeout: 500ms
  retransmit_tries: 3
  audit_log: %s
`, c.CA, c.Cert, c.Key, stateDir, auditLog)
}
