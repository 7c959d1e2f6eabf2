// Package config reads a node's YAML configuration file (one file per
// node) into a Config: the daemon's configuration (daemon.Config) plus the
// settings of the program around it (logging, metrics, control socket).
//
// The file is decoded through yaml.Node so that every error names its field
// path and line; the whole file is checked before anything is returned and
// every error is reported at once. Unknown keys, wrong types, bad addresses
// and contradictory settings are all errors: an invalid file yields no
// Config, so it changes nothing.
//
// Top-level sections are decoded by the functions in sections(); a later
// section (ipsec, bgp, uplinks, firewall) is one more entry there, a field
// in Config, and its checks. Until then those names are unknown keys like
// any other.
package config

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"go.yaml.in/yaml/v4"

	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/gre/backend"
)

// Defaults of the daemon-level settings.
const (
	DefaultSocket        = control.DefaultSocketPath
	DefaultMetricsListen = "127.0.0.1:9474"
	DefaultLogLevel      = "info"
	DefaultLogFormat     = "console"
)

// Config is a node's configuration file, with defaults filled in.
type Config struct {
	// Node names the node: the shell's prompt, the logs.
	Node string
	// Role is "hub" or "spoke".
	Role string
	// Tunnel is the tunnel interface and its NHRP settings.
	Tunnel Tunnel
	// Policy is a hub's registration policy.
	Policy Policy
	// Networks are the networks behind this node it answers resolutions
	// for; empty means the kernel's routes decide.
	Networks []netip.Prefix
	// Forwarding turns IP forwarding on.
	Forwarding bool
	// BGP runs the embedded speaker; nil runs none.
	BGP *BGP
	// IPsec protects the tunnel. Without it the file must say so
	// (`ipsec: off`, IPsecOff): NHRP and GRE then run in clear.
	IPsec    *IPsec
	IPsecOff bool
	// Firewall is the firewall section (zones and rules); without it a
	// node with IPsec runs the baseline policy (FirewallPolicy), unless
	// the file says `firewall: off` (FirewallOff).
	Firewall    *Firewall
	FirewallOff bool
	// Uplinks are the ISP uplinks failed over and balanced; nil without
	// the section.
	Uplinks *Uplinks
	// Limits bound what the node keeps and the work a sender can make it
	// do (the limits section; zero fields take the defaults).
	Limits Limits
	// Logging, Metrics and Control configure the program around the
	// daemon.
	Logging Logging
	Metrics Metrics
	Control Control
	// Warnings are what is valid but must be said (a certificate that
	// expires within 30 days), with line and field like errors.
	Warnings []Error
}

// Tunnel is the tunnel section.
type Tunnel struct {
	Interface string
	// Address is the tunnel address with the tunnel network's prefix
	// length (172.16.1.1/16).
	Address netip.Prefix
	Key     uint32
	// MTU of the tunnel interface; 0 derives it from the underlay.
	MTU int
	// Source is the NBMA source address; invalid lets the kernel choose
	// per peer (follows uplink failover).
	Source netip.Addr
	// TTL of the outer header; 0 is the data plane's default.
	TTL       int
	Dataplane backend.Kind
	// HoldingTime advertised; RegistrationInterval is how often a spoke
	// refreshes (0: a third of the holding time).
	HoldingTime          time.Duration
	RegistrationInterval time.Duration
	// MaxRegistrationHolding caps the holding time a hub grants its
	// clients (0: the larger of the holding time and 7200 s).
	MaxRegistrationHolding time.Duration
	// Authentication is Cisco's cleartext NHRP authentication string.
	Authentication string
	// NoUnique clears the unique flag of registrations.
	NoUnique bool
	NHS      []NHS
	// MaxNHS limits how many servers are used at once (0: all).
	MaxNHS int
	// Redirect (hubs) and Shortcut (DMVPN phase 3).
	Redirect bool
	Shortcut bool
	// ShortcutTable, ShortcutProtocol and ShortcutRulePriority place the
	// shortcut routes in the kernel; ShortcutIdle removes idle ones.
	ShortcutTable        int
	ShortcutProtocol     int
	ShortcutRulePriority int
	ShortcutIdle         time.Duration
	StaticMaps           []StaticMap
	// Multicast is off, dynamic, nhs or static (with MulticastNBMA).
	Multicast     string
	MulticastNBMA []netip.Addr
	// PurgeOnShutdown sends Purge Requests when the daemon stops.
	PurgeOnShutdown bool
	// RedirectGroup is the NFLOG group of the hub's redirect rule.
	RedirectGroup int
	// MaxSend limits NHRP packets sent per second (0: the engine's
	// default).
	MaxSend int
	// StateFile keeps the registrations, bindings and shortcuts across a
	// restart or a crash ("none": nothing is kept); by default beside the
	// control socket: SOCKET-without-extension.INTERFACE.state.
	StateFile string
}

// NHS is a next hop server.
type NHS struct {
	// Address is the server's tunnel address; invalid when learned from
	// its replies.
	Address netip.Addr
	// NBMA is the server's NBMA address, or Host a DNS name whose
	// addresses each become a server.
	NBMA     netip.Addr
	Host     string
	Priority int
}

// StaticMap binds a tunnel address or prefix to an NBMA address.
type StaticMap struct {
	Address netip.Prefix
	NBMA    netip.Addr
}

// Policy is a hub's registration policy: every client in the tunnel
// network (AllowAll, "allow: all"), or only tunnel addresses in Allow (by
// default the tunnel network). A registration outside the tunnel network
// is refused either way. A registration of more than one address (a
// prefix) is refused unless Prefixes ("prefixes: true"): the owner of a
// prefix would be taken for the owner of every unregistered tunnel
// address in it.
type Policy struct {
	AllowAll bool
	Allow    []netip.Prefix
	Prefixes bool
}

// Logging configures the log.
type Logging struct {
	// Level is debug, info, warn or error; Format json or console.
	Level  string
	Format string
}

// Metrics configures the Prometheus endpoint.
type Metrics struct {
	Enabled bool
	// Listen is the host:port served (localhost by default).
	Listen string
}

// Control configures the control API.
type Control struct {
	// Socket is the unix socket path (mode 0600; 0660 with Group).
	Socket string
	// Group (a name or a number; GID resolved, -1 without) may use the
	// socket besides root and dmvpnd's user.
	Group string
	GID   int
	// Listen, when set, also serves the API on this TCP host:port, over
	// TLS (TLSCert, TLSKey) to callers with the bearer token in
	// TokenFile or a client certificate ClientCA signed.
	Listen    string
	TokenFile string
	TLSCert   string
	TLSKey    string
	ClientCA  string
}

// Error is one problem in a configuration file.
type Error struct {
	// Path is the field path ("tunnel.nhs[1].nbma"); Line and Column
	// locate it (0 when unknown).
	Path         string
	Line, Column int
	Msg          string
	// Syntax marks a YAML syntax error: its message names the column too.
	Syntax bool
}

// Error formats the problem as "line N: path: message"; a problem of the
// file as a whole (YAML syntax) as "line N, column C: message".
func (e Error) Error() string {
	loc := ""
	switch {
	case e.Line > 0 && e.Syntax && e.Column > 0:
		loc = fmt.Sprintf("line %d, column %d: ", e.Line, e.Column)
	case e.Line > 0:
		loc = fmt.Sprintf("line %d: ", e.Line)
	}
	if e.Path == "" {
		return loc + e.Msg
	}
	return loc + e.Path + ": " + e.Msg
}

// ErrInvalid is wrapped by every error of an invalid file.
var ErrInvalid = errors.New("invalid configuration")

// Errors are all the problems of a file.
type Errors struct {
	File string
	List []Error
}

// Error lists every problem, one per line, after a summary line.
func (e *Errors) Error() string {
	var b strings.Builder
	n := len(e.List)
	fmt.Fprintf(&b, "%s: %s, %d error", e.File, ErrInvalid, n)
	if n != 1 {
		b.WriteString("s")
	}
	for _, x := range e.List {
		b.WriteString("\n  ")
		b.WriteString(x.Error())
	}
	return b.String()
}

// Unwrap makes errors.Is(err, ErrInvalid) true.
func (e *Errors) Unwrap() error { return ErrInvalid }

// Options change how a file is checked.
type Options struct {
	// UncheckedCredentials turns the certificate checks' errors into
	// warnings: for tests of how peers refuse a node whose certificate
	// names another address, is expired or reads ambiguously (an
	// attacker's node). dmvpnd --unchecked-credentials.
	UncheckedCredentials bool
}

// Load reads and checks a configuration file.
func Load(path string) (*Config, error) { return LoadWith(path, Options{}) }

// LoadWith is Load with options.
func LoadWith(path string, o Options) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the configuration: %w", err)
	}
	return ParseWith(b, path, o)
}

// Parse decodes and checks a configuration; name labels errors.
func Parse(data []byte, name string) (*Config, error) { return ParseWith(data, name, Options{}) }

// ParseWith is Parse with options.
func ParseWith(data []byte, name string, o Options) (*Config, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, &Errors{File: name, List: []Error{syntaxError(err)}}
	}
	d := newDecoder()
	d.opts = o
	c := &Config{}
	switch {
	case doc.Kind == 0 || len(doc.Content) == 0:
		d.errorf(nil, "", "the file is empty")
	case resolve(doc.Content[0]).Kind != yaml.MappingNode:
		d.errorf(doc.Content[0], "", "want a mapping of sections (node, role, tunnel, …), got %s", kindName(resolve(doc.Content[0])))
	default:
		d.mapping(doc.Content[0], "", sections(d, c))
		c.defaults(d)
		c.ipsecDefaults(d)
		c.uplinksDefaults(d)
		c.bgpDefaults(d)
		c.check(d)
		c.ipsecChecks(d)
		c.checkProtection(d)
		c.firewallChecks(d)
		c.uplinksChecks(d)
		c.bgpChecks(d)
	}
	if len(d.errs) > 0 {
		sortErrors(d.errs)
		return nil, &Errors{File: name, List: d.errs}
	}
	sortErrors(d.warns)
	c.Warnings = d.warns
	return c, nil
}

// syntaxError turns a YAML syntax error into an Error at the line and
// column where the problem is, with the construct it was parsing when
// that helps (yaml's LoadError carries both marks).
func syntaxError(err error) Error {
	var le *yaml.LoadError
	if errors.As(err, &le) && le.Mark.Line > 0 {
		msg := "YAML syntax: " + le.Message
		if le.ContextMsg != "" && le.ContextMark.Line > 0 && le.ContextMark != le.Mark {
			msg += fmt.Sprintf(" (%s at line %d, column %d)", le.ContextMsg, le.ContextMark.Line, le.ContextMark.Column)
		}
		return Error{Line: le.Mark.Line, Column: le.Mark.Column, Msg: msg, Syntax: true}
	}
	return Error{Msg: "YAML syntax: " + strings.TrimPrefix(err.Error(), "yaml: "), Syntax: true}
}

// sortErrors orders errors by line, keeping the order of equal lines.
func sortErrors(errs []Error) {
	for i := 1; i < len(errs); i++ {
		for j := i; j > 0 && errs[j].Line < errs[j-1].Line; j-- {
			errs[j], errs[j-1] = errs[j-1], errs[j]
		}
	}
}
