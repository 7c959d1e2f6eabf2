// Command dmvpnctl is the shell of dmvpnd: one-shot (`dmvpnctl show dmvpn`)
// and, in later versions, interactive. `dmvpnctl decode FILE` decodes the
// NHRP packets of a capture.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/opendmvpn/dmvpn/internal/ctl"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := ctl.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
