package config

import (
	"os"
	"time"

	"go.yaml.in/yaml/v4"

	"github.com/opendmvpn/dmvpn/ipsec"
)

// IPsec is the ipsec section: strongSwan driven over VICI, an SA per
// peer, registrations authorised by certificate. Without the section
// NHRP and GRE run in clear.
type IPsec struct {
	// Mode is auto (follow the data plane), kernel or userspace.
	Mode string
	// CA, Cert and Key are PEM files.
	CA   []string
	Cert string
	Key  string
	// HubIdentity, on a spoke, is the identity every hub must prove
	// instead of OU=GRE= of its tunnel address.
	HubIdentity string
	// Charon is "managed" (dmvpnd starts one for this node, its files in
	// StateDir) or "system" (a running charon at Socket).
	Charon   string
	Socket   string
	StateDir string
	// DPDDelay, RetransmitTimeout and RetransmitTries: how fast a dead
	// peer is noticed.
	DPDDelay          time.Duration
	RetransmitTimeout time.Duration
	RetransmitTries   int
	Proposals         []string
	ESPProposals      []string
	// AuditLog is the file of the registration audit stream (JSON lines).
	AuditLog string
	// CRL are certificate revocation lists (PEM or DER) signed by a CA.
	CRL []string
}

// DefaultIPsecStateDir is where a managed charon keeps its files.
const DefaultIPsecStateDir = "/run/dmvpnd/ipsec"

// ipsecSection decodes the ipsec section: a mapping, or `off` (also
// `false`) to run without IPsec on purpose.
func (d *decoder) ipsecSection(n *yaml.Node, p string, c *Config) {
	if d.offSection(n, p, "mode, ca, cert, key, …", &c.IPsecOff) {
		return
	}
	s := &IPsec{}
	c.IPsec = s
	strs := func(out *[]string) func(*yaml.Node, string) {
		return func(n *yaml.Node, p string) {
			if resolve(n).Kind == yaml.ScalarNode {
				var v string
				if d.str(n, p, &v) {
					*out = append(*out, v)
				}
				return
			}
			d.seq(n, p, func(_ int, item *yaml.Node, p string) {
				var v string
				if d.str(item, p, &v) {
					*out = append(*out, v)
				}
			})
		}
	}
	file := func(out *string) func(*yaml.Node, string) {
		return func(n *yaml.Node, p string) { d.file(n, p, out) }
	}
	d.mapping(n, p, fields{
		"mode": func(n *yaml.Node, p string) { d.oneOf(n, p, &s.Mode, "auto", "kernel", "userspace") },
		"ca": func(n *yaml.Node, p string) {
			var files []string
			strs(&files)(n, p)
			for _, f := range files {
				if d.checkFile(n, p, f) {
					s.CA = append(s.CA, f)
				}
			}
		},
		"crl": func(n *yaml.Node, p string) {
			var files []string
			strs(&files)(n, p)
			for _, f := range files {
				if d.checkFile(n, p, f) {
					s.CRL = append(s.CRL, f)
				}
			}
		},
		"cert":         file(&s.Cert),
		"key":          file(&s.Key),
		"hub_identity": func(n *yaml.Node, p string) { d.str(n, p, &s.HubIdentity) },
		"charon":       func(n *yaml.Node, p string) { d.oneOf(n, p, &s.Charon, "managed", "system") },
		"socket":       func(n *yaml.Node, p string) { d.path(n, p, &s.Socket) },
		"state_dir":    func(n *yaml.Node, p string) { d.path(n, p, &s.StateDir) },
		"dpd_delay":    func(n *yaml.Node, p string) { d.duration(n, p, 100*time.Millisecond, time.Hour, &s.DPDDelay) },
		"retransmit_timeout": func(n *yaml.Node, p string) {
			d.duration(n, p, 100*time.Millisecond, time.Minute, &s.RetransmitTimeout)
		},
		"retransmit_tries": func(n *yaml.Node, p string) { d.intField(n, p, 1, 20, &s.RetransmitTries) },
		"proposals":        strs(&s.Proposals),
		"esp_proposals":    strs(&s.ESPProposals),
		"audit_log":        func(n *yaml.Node, p string) { d.path(n, p, &s.AuditLog) },
	})
}

// file decodes an absolute path to a readable file.
func (d *decoder) file(n *yaml.Node, p string, out *string) bool {
	var s string
	if !d.path(n, p, &s) {
		return false
	}
	if !d.checkFile(n, p, s) {
		return false
	}
	*out = s
	return true
}

// checkFile reports an error unless path is a readable regular file.
func (d *decoder) checkFile(n *yaml.Node, p, path string) bool {
	f, err := os.Open(path)
	if err != nil {
		d.errorf(resolve(n), p, "%v", err)
		return false
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		d.errorf(resolve(n), p, "%s is not a regular file", path)
		return false
	}
	return true
}

// ipsecDefaults and ipsecChecks fill defaults and check the section as a
// whole.
func (c *Config) ipsecDefaults(d *decoder) {
	s := c.IPsec
	if s == nil {
		return
	}
	if s.Mode == "" {
		s.Mode = "auto"
	}
	if s.Charon == "" {
		s.Charon = "managed"
	}
	if s.Charon == "managed" && s.StateDir == "" {
		s.StateDir = DefaultIPsecStateDir
	}
	if s.Charon == "system" && s.Socket == "" {
		s.Socket = ipsec.DefaultSystemSocket
	}
}

func (c *Config) ipsecChecks(d *decoder) {
	s := c.IPsec
	if s == nil {
		if !c.IPsecOff && !d.has("ipsec") {
			d.errorAt("ipsec", "missing: configure IPsec (ca, cert and key), or write `ipsec: off` to run NHRP and GRE in clear")
		}
		return
	}
	if len(s.CA) == 0 && !d.has("ipsec.ca") {
		d.errorAt("ipsec", "ipsec needs ca, cert and key")
	}
	if s.Cert == "" && !d.has("ipsec.cert") {
		d.errorAt("ipsec", "ipsec needs a cert")
	}
	if s.Key == "" && !d.has("ipsec.key") {
		d.errorAt("ipsec", "ipsec needs a key")
	}
	if s.HubIdentity != "" && c.Role == "hub" {
		d.errorAt("ipsec.hub_identity", "hub_identity is for spokes (the identity their hubs must prove)")
	}
	if s.Charon == "managed" && d.has("ipsec.socket") {
		d.errorAt("ipsec.socket", "socket is for charon: system; a managed charon's socket is in state_dir")
	}
	if s.Charon == "system" && d.has("ipsec.state_dir") {
		d.errorAt("ipsec.state_dir", "state_dir is for charon: managed")
	}
	c.checkCredentials(d)
}

// checkCredentials reads the certificate files once every one of them
// was found: the key must be the certificate's, the certificate signed
// by ca and for this node's tunnel address, none expired (a certificate
// expiring within 30 days is a warning).
func (c *Config) checkCredentials(d *decoder) {
	s := c.IPsec
	if s.Cert == "" || s.Key == "" || len(s.CA) == 0 || d.failed("ipsec.ca") || d.failed("ipsec.cert") || d.failed("ipsec.key") {
		return
	}
	ps := ipsec.CheckCredentials(ipsec.CredentialCheck{
		CACerts: s.CA, Cert: s.Cert, Key: s.Key, Tunnel: c.Tunnel.Address.Addr(), Hub: c.Role == "hub",
	})
	if len(s.CRL) > 0 && !d.failed("ipsec.crl") {
		if err := ipsec.CheckCRLs(s.CRL, s.CA); err != nil {
			d.errorAt("ipsec.crl", "%v", err)
		}
	}
	for _, p := range ps {
		path := "ipsec." + p.Field
		if p.Field == "ca" && d.has(index(path, p.Index)) {
			path = index(path, p.Index)
		}
		switch {
		case p.Warning:
			d.warnAt(path, "%s", p.Msg)
		case d.opts.UncheckedCredentials:
			d.warnAt(path, "%s (unchecked: started with --unchecked-credentials)", p.Msg)
		default:
			d.errorAt(path, "%s", p.Msg)
		}
	}
}

// ipsecConfig returns the ipsec package's configuration.
func (s *IPsec) ipsecConfig() *ipsec.Config {
	if s == nil {
		return nil
	}
	return &ipsec.Config{
		Mode: ipsec.Mode(s.Mode), CACerts: append([]string(nil), s.CA...), Cert: s.Cert, Key: s.Key,
		HubIdentity: s.HubIdentity, Managed: s.Charon == "managed", Dir: s.StateDir, Socket: s.Socket,
		DPDDelay: s.DPDDelay, RetransmitTimeout: s.RetransmitTimeout, RetransmitTries: s.RetransmitTries,
		Proposals: append([]string(nil), s.Proposals...), ESPProposals: append([]string(nil), s.ESPProposals...),
		AuditLog: s.AuditLog, CRL: append([]string(nil), s.CRL...),
	}
}

// renderIPsec renders the section for show running-config.
func renderIPsec(s *IPsec) *yaml.Node {
	m := mapNode("mode", str(s.Mode))
	if len(s.CA) == 1 {
		m.add("ca", str(s.CA[0]))
	} else {
		seq := &yaml.Node{Kind: yaml.SequenceNode}
		for _, f := range s.CA {
			seq.Content = append(seq.Content, str(f))
		}
		m.add("ca", seq)
	}
	m.add("cert", str(s.Cert))
	m.add("key", str(s.Key))
	if s.HubIdentity != "" {
		m.add("hub_identity", str(s.HubIdentity))
	}
	m.add("charon", str(s.Charon))
	if s.Socket != "" {
		m.add("socket", str(s.Socket))
	}
	if s.StateDir != "" {
		m.add("state_dir", str(s.StateDir))
	}
	if s.DPDDelay != 0 {
		m.add("dpd_delay", raw(durationString(s.DPDDelay)))
	}
	if s.RetransmitTimeout != 0 {
		m.add("retransmit_timeout", raw(durationString(s.RetransmitTimeout)))
	}
	if s.RetransmitTries != 0 {
		m.add("retransmit_tries", num(s.RetransmitTries))
	}
	for _, l := range []struct {
		k string
		v []string
	}{{"proposals", s.Proposals}, {"esp_proposals", s.ESPProposals}} {
		if len(l.v) > 0 {
			seq := &yaml.Node{Kind: yaml.SequenceNode}
			for _, p := range l.v {
				seq.Content = append(seq.Content, str(p))
			}
			m.add(l.k, seq)
		}
	}
	if s.AuditLog != "" {
		m.add("audit_log", str(s.AuditLog))
	}
	if len(s.CRL) > 0 {
		seq := &yaml.Node{Kind: yaml.SequenceNode}
		for _, f := range s.CRL {
			seq.Content = append(seq.Content, str(f))
		}
		m.add("crl", seq)
	}
	return m.Node
}
