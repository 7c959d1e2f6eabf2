// Package lab is dmvpn-lab: a whole DMVPN in network namespaces on this
// machine, built with its testbed (lab/testbed), with dmvpnd (userspace data
// plane) in every hub and spoke and generated configurations. `up` waits
// for convergence, prints show dmvpn of every node and demonstrates a
// spoke-to-spoke shortcut; `down` removes everything. Every hub and spoke
// runs IPsec by default: a CA made at up, a certificate per node with the
// Alpine guide's OU fields, a charon per namespace started by dmvpnd.
// `up --rogue` adds a spoke whose valid certificate names another spoke's
// tunnel address and shows the hubs refusing it. The lab outlives the
// command: its state (namespaces, daemon pids, sockets) is kept in a
// directory, /run/dmvpn-lab by default.
package lab

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/opendmvpn/dmvpn/ctl"
	"github.com/opendmvpn/dmvpn/lab/testbed"
)

// Defaults.
const (
	DefaultDir    = "/run/dmvpn-lab"
	DefaultPrefix = "dmvlab"
)

// Lab is a lab's location: its state directory and namespace prefix.
type Lab struct {
	Dir    string
	Prefix string
	Out    io.Writer
	Err    io.Writer
	// Self is how the user ran dmvpn-lab, for the hints it prints.
	Self string
}

// ctl runs a dmvpnctl command against a node's socket, printing to Out.
func (l *Lab) ctl(ctx context.Context, socket string, args ...string) int {
	return ctl.Run(ctx, append([]string{"--socket", socket}, args...), strings.NewReader(""), l.Out, l.Err, nil)
}

const usage = `usage: dmvpn-lab [--dir DIR] [--prefix NAME] COMMAND

  up [--no-ipsec] [--rogue] [--no-firewall] [--dataplane DP] [TOPOLOGY]
                       build the lab (default topology: alpine), wait until it
                       has converged, show every node, the IPsec SAs and a
                       spoke-to-spoke shortcut. Every hub and spoke runs IPsec
                       (strongSwan's charon, certificates from a CA made for
                       the lab) unless --no-ipsec; --rogue adds a spoke whose
                       valid certificate names another spoke's tunnel address
                       and shows the hubs refusing it. Every node runs its
                       nftables firewall unless --no-firewall: a GRE packet
                       injected in clear at hub1 is shown dropped by it.
                       --dataplane: userspace (default), ebpf, or kernel
                       (ip_gre and kernel ESP: a kernel that has them)
  down                 stop every daemon and remove every namespace
  status               nodes, namespaces and daemons
  fail NODE ISP [--link]
                       cut a node's ISP (isp1 or isp2: spoke1 has both) and
                       follow the failover: an nftables drop on the ISP's
                       router with the link up, or --link: the link down
  restore NODE ISP     undo fail and follow the node back to its preferred ISP
  exec NODE -- CMD…    run a command in a node (hub1, spoke1, spoke1-h1, inet…)
  shell NODE           open dmvpnctl on a hub or spoke
  revoke NODE          revoke a hub's or spoke's certificate: the lab's CA
                       signs the next CRL with it, the nodes cut it off
  restart [--kill] NODE
                       stop a hub's or spoke's dmvpnd (--kill: SIGKILL, as a
                       crash would) and start it again with the same file
  topologies           list the topologies

DMVPN_LAB_WAIT_SCALE=N multiplies every wait (a slow machine, a VM under
emulation).

`

// Main runs dmvpn-lab with args and returns the exit status.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dmvpn-lab", flag.ContinueOnError)
	fs.SetOutput(stderr)
	l := &Lab{Out: stdout, Err: stderr, Self: "dmvpn-lab"}
	if len(os.Args) > 0 && strings.Contains(os.Args[0], "/") {
		l.Self = os.Args[0]
	}
	fs.StringVar(&l.Dir, "dir", envOr("DMVPN_LAB_DIR", DefaultDir), "state directory (env DMVPN_LAB_DIR)")
	fs.StringVar(&l.Prefix, "prefix", envOr("DMVPN_LAB_PREFIX", DefaultPrefix), "namespace name prefix (env DMVPN_LAB_PREFIX)")
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if abs, err := filepath.Abs(l.Dir); err == nil {
		l.Dir = abs // the generated configurations need absolute paths
	}
	// The hints name this lab: a command copied from them must not reach
	// the default one.
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "dir":
			l.Self += " --dir " + l.Dir
		case "prefix":
			l.Self += " --prefix " + l.Prefix
		}
	})
	args = fs.Args()
	if len(args) == 0 {
		fs.Usage()
		return 2
	}
	var err error
	switch cmd, rest := args[0], args[1:]; cmd {
	case "up":
		topo, opts, ok := parseUp(rest, stderr)
		if !ok {
			fs.Usage()
			return 2
		}
		err = l.Up(ctx, topo, opts)
	case "down":
		err = l.Down(ctx)
	case "status":
		err = l.Status(ctx)
	case "topologies":
		for _, t := range Topologies {
			fmt.Fprintf(stdout, "%-8s %s\n", t.Name, t.About)
		}
	case "fail", "restore":
		mode := testbed.CutDrop
		var pos []string
		for _, a := range rest {
			switch a {
			case "--link", "-link":
				mode = testbed.CutLink
			default:
				pos = append(pos, a)
			}
		}
		if len(pos) != 2 || (cmd == "restore" && mode != testbed.CutDrop) {
			fs.Usage()
			return 2
		}
		if cmd == "fail" {
			err = l.Fail(ctx, pos[0], pos[1], mode)
		} else {
			err = l.Restore(ctx, pos[0], pos[1])
		}
	case "exec":
		if len(rest) < 1 {
			fs.Usage()
			return 2
		}
		cmdArgs := rest[1:]
		if len(cmdArgs) > 0 && cmdArgs[0] == "--" {
			cmdArgs = cmdArgs[1:]
		}
		code, err := l.Exec(ctx, rest[0], cmdArgs, stdin)
		if err != nil {
			fmt.Fprintf(stderr, "dmvpn-lab: %v\n", err)
		}
		return code
	case "revoke":
		if len(rest) != 1 {
			fs.Usage()
			return 2
		}
		err = l.Revoke(ctx, rest[0])
	case "restart":
		kill := len(rest) == 2 && rest[0] == "--kill"
		if kill {
			rest = rest[1:]
		}
		if len(rest) != 1 {
			fs.Usage()
			return 2
		}
		err = l.Restart(ctx, rest[0], kill)
	case "shell":
		if len(rest) != 1 {
			fs.Usage()
			return 2
		}
		err = l.Shell(rest[0])
	default:
		fmt.Fprintf(stderr, "dmvpn-lab: unknown command %q\n", cmd)
		fs.Usage()
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "dmvpn-lab: %v\n", err)
		return 1
	}
	return 0
}

// UpOptions are the flags of up.
type UpOptions struct {
	// NoIPsec builds the lab with NHRP and GRE in clear.
	NoIPsec bool
	// Rogue adds the rogue spoke.
	Rogue bool
	// NoFirewall runs the nodes without their firewall.
	NoFirewall bool
	// Dataplane is the nodes' data plane: "" (userspace), "ebpf" or
	// "kernel".
	Dataplane string
}

// parseUp reads up's arguments: flags before or after the topology.
func parseUp(args []string, stderr io.Writer) (topo string, opts UpOptions, ok bool) {
	fs := flag.NewFlagSet("dmvpn-lab up", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.BoolVar(&opts.NoIPsec, "no-ipsec", false, "NHRP and GRE in clear: no certificates, no charon")
	fs.BoolVar(&opts.Rogue, "rogue", false, "add a spoke whose certificate names another spoke's tunnel address")
	fs.BoolVar(&opts.NoFirewall, "no-firewall", false, "run the nodes without their nftables firewall")
	fs.StringVar(&opts.Dataplane, "dataplane", "", "the nodes' data plane: userspace (default), ebpf, or kernel (ip_gre and kernel ESP)")
	for {
		if err := fs.Parse(args); err != nil {
			return "", opts, false
		}
		if fs.NArg() == 0 {
			break
		}
		if topo != "" {
			fmt.Fprintf(stderr, "dmvpn-lab up: one topology, not %q and %q\n", topo, fs.Arg(0))
			return "", opts, false
		}
		topo, args = fs.Arg(0), fs.Args()[1:]
	}
	switch opts.Dataplane {
	case "", "ebpf", "kernel":
	case "userspace":
		opts.Dataplane = ""
	default:
		fmt.Fprintf(stderr, "dmvpn-lab up: --dataplane %q is none of userspace, ebpf, kernel\n", opts.Dataplane)
		return "", opts, false
	}
	if opts.Rogue && opts.NoIPsec {
		fmt.Fprintln(stderr, "dmvpn-lab up: --rogue shows certificate authorisation; it needs IPsec (drop --no-ipsec)")
		return "", opts, false
	}
	return topo, opts, true
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
