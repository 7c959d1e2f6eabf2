// Package ctl is the command tree of dmvpnctl, the vtysh-like shell: the
// one-shot command line and the interactive shell run the same cobra
// commands. Commands write to the command's output streams and return
// errors; nothing here calls os.Exit.
//
// Commands talk to dmvpnd through its control API (daemon/control).
// Adding a command is local: write its constructor and add it to the list
// of its parent in commands(), showCommands() or ipShowCommands().
package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/opendmvpn/dmvpn/daemon/config"
	"github.com/opendmvpn/dmvpn/daemon/control"
)

// DefaultSocket is the control socket dmvpnd listens on by default.
const DefaultSocket = control.DefaultSocketPath

// EnvSocket names the environment variable that overrides DefaultSocket.
const EnvSocket = "DMVPNCTL_SOCKET"

// Options configure the command tree.
type Options struct {
	// Socket is the control socket path; the --socket flag overrides it.
	Socket string
	// Config is dmvpnd's configuration file (-c): its control.socket is
	// the socket, unless --socket names one.
	Config string
	// Remote reaches the API on TCP instead (--server and its files).
	Remote Remote
	// Interactive adds the shell-only commands (exit, quit).
	Interactive bool
	// Exit ends the interactive shell (exit, quit, Ctrl-D).
	Exit func()
}

// env is what the commands share: the options after flag parsing, and
// the remote client once its files are read.
type env struct {
	opts   *Options
	remote *control.Client
}

func (e *env) client() *control.Client {
	if e.remote != nil {
		return e.remote
	}
	return control.NewClient(e.opts.Socket)
}

// NewRoot returns the root command with every subcommand.
func NewRoot(opts Options) *cobra.Command {
	if opts.Socket == "" {
		opts.Socket = DefaultSocket
		if s := os.Getenv(EnvSocket); s != "" {
			opts.Socket = s
		}
	}
	e := &env{opts: &opts}
	root := &cobra.Command{
		Use:   "dmvpnctl",
		Short: "Shell for dmvpnd, the DMVPN hub and spoke router",
		Long: `dmvpnctl is the shell of dmvpnd. Without a command it starts an interactive
shell (tab completion, '?' for help, abbreviations like 'sh ip nh');
with one it runs it and exits: dmvpnctl show dmvpn`,
		SilenceUsage:      true,
		SilenceErrors:     true,
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
	}
	root.SetHelpCommand(&cobra.Command{Use: "no-help", Hidden: true})
	root.PersistentFlags().StringVar(&opts.Socket, "socket", opts.Socket, "`PATH` of dmvpnd's control socket (env "+EnvSocket+")")
	root.PersistentFlags().StringVarP(&opts.Config, "config", "c", opts.Config, "dmvpnd's configuration `FILE`: connect to the control.socket it names (--socket wins)")
	given := opts.Remote
	opts.Remote.addFlags(root)
	if given.Server != "" { // given by the shell: keep it over the environment
		opts.Remote = given
	}
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		sock, err := socketFromFlags(cmd, opts.Socket)
		if err != nil {
			return err
		}
		opts.Socket = sock
		if opts.Remote.Server == "" {
			return nil
		}
		c, err := opts.Remote.client()
		if err != nil {
			return err
		}
		e.remote = c
		return nil
	}
	for _, c := range commands(e) {
		root.AddCommand(c)
	}
	return root
}

// commands are the top-level commands.
func commands(e *env) []*cobra.Command {
	cs := []*cobra.Command{
		group("show", "Show running system information", showCommands(e)...),
		group("clear", "Reset functions", group("ip", "IP", newClearNHRP(e), newClearBGP(e)), newClearCrypto(e)),
		group("debug", "Debugging functions (stream events until interrupted)", newDebugNHRP(e), newDebugCrypto(e)),
		newReload(e),
		newFirewall(e),
		withArg(newDecodeCmd(), "FILE", "A pcap or pcapng capture"),
	}
	if e.opts.Interactive {
		for _, name := range []string{"exit", "quit"} {
			cs = append(cs, &cobra.Command{
				Use: name, Short: "Leave the shell", Args: cobra.NoArgs,
				RunE: func(*cobra.Command, []string) error {
					if e.opts.Exit != nil {
						e.opts.Exit()
					}
					return nil
				},
			})
		}
	}
	return cs
}

// showCommands are the children of "show".
func showCommands(e *env) []*cobra.Command {
	return []*cobra.Command{
		newShowDmvpn(e),
		newShowCrypto(e),
		newShowFirewall(e),
		newShowUplinks(e),
		group("ip", "IP information", ipShowCommands(e)...),
		newShowRunningConfig(e),
		newShowVersion(e),
	}
}

// ipShowCommands are the children of "show ip".
func ipShowCommands(e *env) []*cobra.Command {
	return []*cobra.Command{newShowNHRP(e), newShowBGP(e)}
}

// group is a command that only holds subcommands.
func group(name, short string, subs ...*cobra.Command) *cobra.Command {
	c := &cobra.Command{Use: name, Short: short, Args: cobra.NoArgs, Annotations: map[string]string{annGroup: "true"},
		RunE: func(cmd *cobra.Command, _ []string) error {
			return fmt.Errorf("incomplete command %q: type ? to see what can follow", pathOf(cmd))
		}}
	for _, s := range subs {
		c.AddCommand(s)
	}
	return c
}

// Run executes the command line args and returns the process exit status.
// With no command it runs the interactive shell on a terminal, or reads
// commands line by line from stdin otherwise.
func Run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, exit func()) int {
	if ok, desc := completeRequest(args); ok {
		return complete(args[1:], stdout, desc)
	}
	opts := Options{}
	probe := NewRoot(opts)
	probe.SetArgs(args)
	probe.SetOut(io.Discard)
	if err := probe.ParseFlags(args); err == nil && len(probe.Flags().Args()) == 0 && !hasHelpFlag(args) {
		sock, _ := probe.Flags().GetString("socket")
		if sock, err = socketFromFlags(probe, sock); err != nil {
			printError(stderr, err)
			return 1
		}
		return ShellWith(context.WithoutCancel(ctx), Options{Socket: sock, Remote: remoteFromFlags(probe)}, stdin, stdout, stderr, exit)
	}
	cmdArgs, p, err := splitPipe(args)
	if err == nil {
		err = runPiped(ctx, NewRoot(opts), cmdArgs, p, stdout, stderr)
	}
	if err != nil {
		printError(stderr, err)
		return 1
	}
	return 0
}

// socketFromFlags is the control socket of a parsed command line: sock
// (--socket, the environment's or the default), or the control.socket of
// the file -c names when --socket was not given.
func socketFromFlags(c *cobra.Command, sock string) (string, error) {
	file, _ := c.Flags().GetString("config")
	if file == "" || c.Flags().Changed("socket") {
		return sock, nil
	}
	s, err := config.ControlSocket(file)
	if err != nil {
		return "", fmt.Errorf("-c: %w", err)
	}
	return s, nil
}

func hasHelpFlag(args []string) bool {
	for _, a := range args {
		if a == "-h" || a == "--help" {
			return true
		}
	}
	return false
}

// printError shows an error as one line, vtysh style; an answer with
// reasons (a refused reload) as its first line and one line per reason.
func printError(w io.Writer, err error) {
	msg := err.Error()
	var api *control.APIError
	if errors.As(err, &api) {
		msg = api.Msg
		if len(api.Reasons) > 0 {
			head, _, _ := strings.Cut(msg, "\n")
			fmt.Fprintf(w, "%% %s\n", strings.TrimSpace(head))
			for _, r := range api.Reasons {
				fmt.Fprintf(w, "  %s\n", r)
			}
			return
		}
	}
	msg = strings.Join(strings.Fields(strings.ReplaceAll(msg, "\n", "; ")), " ")
	fmt.Fprintf(w, "%% %s\n", msg)
}

// writeJSON prints v indented.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// writeJSONLine prints v as one line.
func writeJSONLine(w io.Writer, v any) error {
	return json.NewEncoder(w).Encode(v)
}
