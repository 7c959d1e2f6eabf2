// Command dmvpn-lab builds a whole DMVPN in network namespaces on this
// machine and runs it: `dmvpn-lab up` (two hubs, three spokes with a LAN
// host each, one behind NAT, dmvpnd in every node, IPsec with
// certificates from a CA made for the lab unless --no-ipsec; --rogue adds
// a spoke the hubs must refuse), `status`, `exec NODE -- CMD…`,
// `shell NODE` (dmvpnctl on that node) and `down`. It needs root.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/opendmvpn/dmvpn/lab"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := lab.Main(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
