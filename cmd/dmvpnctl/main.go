// Command dmvpnctl is the shell of dmvpnd: one-shot (`dmvpnctl show dmvpn`)
// or, without a command, interactive (prompt with the node name, history,
// tab completion, `?` help, abbreviations such as `sh ip nh`).
// `dmvpnctl decode FILE` decodes the NHRP packets of a capture.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/opendmvpn/dmvpn/ctl"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := ctl.Run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, func() { os.Exit(0) })
	stop()
	os.Exit(code)
}
