// Package ctl is the command tree of dmvpnctl, the vtysh-like shell: the
// one-shot command line and the interactive shell run the same cobra
// commands. Commands write to the command's output streams and return
// errors; nothing here calls os.Exit.
package ctl

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

// DefaultSocket is the control socket dmvpnd listens on by default.
const DefaultSocket = "/run/dmvpnd/dmvpnd.sock"

// Options configure the command tree.
type Options struct {
	// Socket is the control socket path; the --socket flag overrides it.
	Socket string
}

// NewRoot returns the root command with every subcommand.
func NewRoot(opts Options) *cobra.Command {
	if opts.Socket == "" {
		opts.Socket = DefaultSocket
	}
	root := &cobra.Command{
		Use:           "dmvpnctl",
		Short:         "Shell for dmvpnd, the DMVPN hub and spoke router",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&opts.Socket, "socket", opts.Socket, "control socket of dmvpnd")
	root.AddCommand(newDecodeCmd())
	return root
}

// Run executes the command line args and returns the process exit status.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := NewRoot(Options{})
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(stderr, "%% %v\n", err)
		return 1
	}
	return 0
}
