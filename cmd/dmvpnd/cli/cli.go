// Package cli is dmvpnd's command line: its flags, how they are spelled
// (-c FILE, --check: one dash for a letter, two for a word, as the README
// writes them) and the text of its usage. The command parses with it, and
// packaging generates dmvpnd's manual page and shell completions from the
// same flag set, so the three cannot drift.
package cli

import (
	"flag"
	"fmt"
	"io"
	"strings"
)

// DefaultConfig is the configuration file read without -c.
const DefaultConfig = "/etc/dmvpn/dmvpnd.yaml"

// Name is the command's name.
const Name = "dmvpnd"

// Short is the one-line description (the manual page's NAME).
const Short = "DMVPN hub and spoke router daemon"

// Description is what --help prints below the synopsis, and the manual
// page's DESCRIPTION, one paragraph per element.
var Description = []string{
	"dmvpnd runs a DMVPN hub or spoke from one YAML file: the multipoint GRE tunnel, NHRP (RFC 2332 with Cisco's extensions), IPsec through a strongSwan charon it drives over VICI, the control API that dmvpnctl talks to, and Prometheus metrics.",
	"SIGHUP reloads the file (dmvpnctl reload does the same through the control API): it is checked whole and applied, or refused with its errors and nothing changes. SIGTERM or SIGINT stop it cleanly: Purge Requests to its peers, then its tunnel, routes, neighbour entries and rules are removed.",
	"Under systemd (Type=notify) it reports readiness once the tunnel and charon are up, and when its standard error is the journal each log line carries its syslog priority.",
}

// Item is a term and what it means (a file, an exit status).
type Item struct{ Term, Text string }

// Files are the files dmvpnd reads and makes by default (the manual
// page's FILES).
var Files = []Item{
	{DefaultConfig, "the configuration (-c); the Debian package installs a hub's, and hub1.yaml, hub2.yaml and spoke1.yaml are in /usr/share/doc/dmvpn/examples"},
	{"/etc/dmvpn/pki/", "where the examples expect the CA certificate, this node's certificate and its key (ipsec.ca, ipsec.cert, ipsec.key)"},
	{"/run/dmvpnd/dmvpnd.sock", "the control socket dmvpnctl talks to (control.socket), mode 0600"},
	{"/run/dmvpnd/ipsec/", "the managed charon's strongswan.conf, VICI socket and charon.log (ipsec.state_dir)"},
	{"/run/dmvpnd/dmvpnd.gre1.host", "the host state file (SOCKET.INTERFACE.host beside the control socket): what dmvpnd must put back and the kernel identifiers it owns, kept across a crash"},
	{"/var/log/dmvpn/audit.jsonl", "the examples' audit log: every registration accepted or refused, one JSON object per line (ipsec.audit_log)"},
}

// ExitStatus are dmvpnd's exit codes.
var ExitStatus = []Item{
	{"0", "a clean stop, or a valid configuration with --check"},
	{"1", "an invalid configuration, or a failure at start or while running"},
	{"2", "a bad command line"},
}

// Options are the parsed flags.
type Options struct {
	// Config is the configuration file (-c).
	Config string
	// Check validates the file and exits (--check).
	Check bool
	// KeepRoutes leaves routes and neighbour entries in the kernel on stop.
	KeepRoutes bool
	// Version prints the version and exits.
	Version bool
	// UncheckedCredentials turns the certificate checks' errors into
	// warnings (tests of how peers refuse such a node).
	UncheckedCredentials bool
}

// NewFlagSet returns dmvpnd's flag set, writing its errors to out, and
// the options it fills. A flag's argument name is the back-quoted word of
// its usage (flag.UnquoteUsage). Its Usage prints nothing: the caller
// prints PrintUsage for -h/--help and ShortUsage after an error.
func NewFlagSet(out io.Writer) (*flag.FlagSet, *Options) {
	o := &Options{}
	fs := flag.NewFlagSet(Name, flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&o.Config, "c", DefaultConfig, "read the configuration from `FILE`")
	fs.BoolVar(&o.Check, "check", false, "check the configuration file and exit: 0 when valid, 1 with every error otherwise")
	fs.BoolVar(&o.KeepRoutes, "keep-routes", false, "on stop, leave routes and neighbour entries in the kernel (quick restart)")
	fs.BoolVar(&o.Version, "version", false, "print the version and exit")
	fs.BoolVar(&o.UncheckedCredentials, "unchecked-credentials", false, "start even when the certificate checks fail (they are logged as warnings): for testing how peers refuse such a node")
	fs.Usage = func() {}
	return fs, o
}

// Spelling is how a flag is written: -c for one letter, --check for a word.
func Spelling(f *flag.Flag) string {
	if len(f.Name) == 1 {
		return "-" + f.Name
	}
	return "--" + f.Name
}

// Arg is the name of a flag's argument (FILE), empty for a switch.
func Arg(f *flag.Flag) string {
	if isBool(f) {
		return ""
	}
	name, _ := flag.UnquoteUsage(f)
	return name
}

// Usage is a flag's description, with its default when it has one.
func Usage(f *flag.Flag) string {
	_, u := flag.UnquoteUsage(f)
	if !isBool(f) && f.DefValue != "" {
		u += " (default " + f.DefValue + ")"
	}
	return u
}

func isBool(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// Flags returns the flags sorted by name (-c, --check, --keep-routes,
// --unchecked-credentials, --version), the order of the usage, the manual page and the README.
func Flags(fs *flag.FlagSet) []*flag.Flag {
	var out []*flag.Flag
	fs.VisitAll(func(f *flag.Flag) { out = append(out, f) })
	return out
}

// Synopsis is the command line in brief: dmvpnd [-c FILE] [--check] …
func Synopsis(fs *flag.FlagSet) string {
	parts := []string{Name}
	for _, f := range Flags(fs) {
		s := Spelling(f)
		if a := Arg(f); a != "" {
			s += " " + a
		}
		parts = append(parts, "["+s+"]")
	}
	return strings.Join(parts, " ")
}

// ShortUsage writes the synopsis and where to read more, after a bad
// command line.
func ShortUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(w, "usage: %s\n(%s --help says more)\n", Synopsis(fs), Name)
}

// PrintUsage writes --help: the synopsis, the description and the flags.
func PrintUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(w, "usage: %s\n\n", Synopsis(fs))
	for _, p := range Description {
		fmt.Fprintf(w, "%s\n\n", wrap(p, 78))
	}
	fmt.Fprintf(w, "Flags:\n")
	width := 0
	for _, f := range Flags(fs) {
		width = max(width, len(flagColumn(f)))
	}
	for _, f := range Flags(fs) {
		fmt.Fprintf(w, "  %-*s  %s\n", width, flagColumn(f), Usage(f))
	}
}

func flagColumn(f *flag.Flag) string {
	if a := Arg(f); a != "" {
		return Spelling(f) + " " + a
	}
	return Spelling(f)
}

// wrap breaks text into lines of at most width characters.
func wrap(text string, width int) string {
	var b strings.Builder
	n := 0
	for _, w := range strings.Fields(text) {
		if n > 0 && n+1+len(w) > width {
			b.WriteByte('\n')
			n = 0
		} else if n > 0 {
			b.WriteByte(' ')
			n++
		}
		b.WriteString(w)
		n += len(w)
	}
	return b.String()
}
