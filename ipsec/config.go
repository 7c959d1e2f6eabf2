package ipsec

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/opendmvpn/dmvpn/nhrp"
)

// Mode selects how ESP is done.
type Mode string

// Modes. Auto follows the data plane: kernel for ip_gre, userspace
// otherwise.
const (
	ModeAuto      Mode = "auto"
	ModeKernel    Mode = "kernel"    // strongSwan kernel-netlink, transport mode, proto gre selectors
	ModeUserspace Mode = "userspace" // strongSwan kernel-libipsec, tunnel mode, policy rules
)

// Defaults.
const (
	DefaultCharon       = "/usr/lib/ipsec/charon"
	DefaultSystemSocket = "/var/run/charon.vici"
	DefaultProposal     = "aes256gcm16-prfsha256-ecp256"
	DefaultESPProposal  = "aes256gcm16"
	DefaultDPDDelay     = time.Second
	// DefaultHubDPDDelay is a hub's: its charon checks each idle spoke
	// this often. At 1 s a hub of 100,000 spokes that send nothing (a
	// Cisco spoke without DPD) would run 100,000 IKE exchanges a second —
	// about 9 cores of charon at the 93 µs per SA-second measured here
	// (bench-ipsec); at 30 s, 3,333 a second, a third of a core. Spokes
	// keep 1 s toward their few hubs: that is what brings them back within
	// seconds of a hub's restart.
	DefaultHubDPDDelay   = 30 * time.Second
	DefaultRetransmit    = 500 * time.Millisecond
	DefaultRetransmitTry = 3
	DefaultUpTimeout     = 10 * time.Second
	// Fwmark marks charon's own packets in userspace mode so they skip
	// its ipsec TUN's routing table.
	Fwmark = 0x42
)

// Config configures the IPsec manager.
type Config struct {
	// Mode is kernel, userspace or auto (resolved by the daemon).
	Mode Mode
	// CACerts, Cert and Key are PEM files: the CA certificates peers must
	// chain to, this node's certificate and its private key.
	CACerts []string
	Cert    string
	Key     string
	// Tunnel is this node's tunnel address: its certificate's OU=GRE=
	// must be it. The credential files are checked as dmvpnd --check
	// does (validity dates, OU=GRE=) whenever they are read — at start,
	// by the file watch, by a reload — and a set that fails is not
	// loaded; UncheckedCredentials (dmvpnd --unchecked-credentials)
	// checks only that they belong together, what charon needs.
	Tunnel               netip.Addr
	UncheckedCredentials bool
	// HubIdentity, on a spoke, is the identity every next hop server must
	// prove; empty means its certificate's OU=GRE= must be the server's
	// tunnel address.
	HubIdentity string
	// Managed starts charon for this node (with a generated
	// strongswan.conf in Dir); otherwise Socket is a running charon's VICI
	// socket.
	Managed bool
	Charon  string
	Dir     string
	Socket  string
	// DPDDelay, RetransmitTimeout and RetransmitTries set how fast a dead
	// peer is noticed: with 1 s, 0.5 s and 3 a hub restart is detected in
	// about 2-4 s (dpd_delay of silence, then 4 retransmits).
	DPDDelay          time.Duration
	RetransmitTimeout time.Duration
	RetransmitTries   int
	// Proposals are IKE proposals, ESPProposals the CHILD_SA ones.
	Proposals    []string
	ESPProposals []string
	// UpTimeout bounds the wait for a CHILD_SA after initiate.
	UpTimeout time.Duration
	// CRL lists certificate revocation lists (PEM or DER files) signed
	// by a CA of CACerts: a certificate they revoke is refused, and the
	// SAs and registrations of a peer whose certificate a new list
	// revokes are ended. The files are read again when they change and
	// on SIGHUP.
	CRL []string
	// AuditLog is the file of the registration audit stream (JSON lines);
	// empty writes it to standard output.
	AuditLog string
	// AuditLogMaxSize rotates the audit log's file when a line would take
	// it past this many bytes (0: DefaultAuditLogMaxSize; negative:
	// never), keeping AuditLogKeep rotated files (0: DefaultAuditLogKeep)
	// as AuditLog.1 (newest) … AuditLog.N.
	AuditLogMaxSize int64
	AuditLogKeep    int
	// MaxPeers is the node's limits.max_peers (0: nhrp.DefaultMaxPeers):
	// it sizes the IKE SA limit of a managed charon (charonLimits).
	MaxPeers int
}

// Audit log rotation defaults: at most 5 × 64 MiB on disk.
const (
	DefaultAuditLogMaxSize = 64 << 20
	DefaultAuditLogKeep    = 4
)

// withDefaults fills zero fields.
func (c Config) withDefaults() Config {
	if c.AuditLogMaxSize == 0 {
		c.AuditLogMaxSize = DefaultAuditLogMaxSize
	}
	if c.AuditLogKeep == 0 {
		c.AuditLogKeep = DefaultAuditLogKeep
	}
	if c.Charon == "" {
		c.Charon = DefaultCharon
	}
	if c.Socket == "" {
		if c.Managed && c.Dir != "" {
			c.Socket = c.Dir + "/charon.vici"
		} else {
			c.Socket = DefaultSystemSocket
		}
	}
	if c.DPDDelay == 0 {
		c.DPDDelay = DefaultDPDDelay
	}
	if c.RetransmitTimeout == 0 {
		c.RetransmitTimeout = DefaultRetransmit
	}
	if c.RetransmitTries == 0 {
		c.RetransmitTries = DefaultRetransmitTry
	}
	if len(c.Proposals) == 0 {
		c.Proposals = []string{DefaultProposal}
	}
	if len(c.ESPProposals) == 0 {
		c.ESPProposals = []string{DefaultESPProposal}
	}
	if c.UpTimeout == 0 {
		c.UpTimeout = DefaultUpTimeout
	}
	if c.MaxPeers <= 0 {
		c.MaxPeers = nhrp.DefaultMaxPeers
	}
	return c
}

// ErrConfig wraps configuration errors.
var ErrConfig = errors.New("ipsec: invalid config")

// Validate checks the configuration; files must be readable.
func (c *Config) Validate() error {
	var errs []error
	bad := func(f string, a ...any) { errs = append(errs, fmt.Errorf("%w: "+f, append([]any{ErrConfig}, a...)...)) }
	switch c.Mode {
	case "", ModeAuto, ModeKernel, ModeUserspace:
	default:
		bad("mode %q (want auto, kernel or userspace)", c.Mode)
	}
	if len(c.CACerts) == 0 {
		bad("no CA certificate")
	}
	for _, f := range append(append([]string(nil), c.CACerts...), c.Cert, c.Key) {
		if f == "" {
			bad("certificate and key files are required")
			continue
		}
		if _, err := os.Stat(f); err != nil {
			bad("%v", err)
		}
	}
	for _, f := range c.CRL {
		if _, err := os.Stat(f); err != nil {
			bad("crl: %v", err)
		}
	}
	if c.Managed && c.Dir == "" {
		bad("a managed charon needs a state directory")
	}
	if c.RetransmitTries < 0 || c.DPDDelay < 0 || c.RetransmitTimeout < 0 {
		bad("negative timer")
	}
	return errors.Join(errs...)
}
