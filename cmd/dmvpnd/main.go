// Command dmvpnd is the DMVPN hub and spoke daemon: it runs a node from one
// YAML file (-c, default /etc/dmvpn/dmvpnd.yaml), serves the control API
// that dmvpnctl talks to and the Prometheus metrics, reloads the file on
// SIGHUP and stops cleanly on SIGTERM or SIGINT. --check validates the
// file; --keep-routes leaves routes and neighbours in place on stop.
//
// The node itself is the daemon package (daemon, daemon/config,
// daemon/control, daemon/metrics); this command reads the file, wires them
// together and handles signals.
package main

import "os"

func main() {
	setGC()
	os.Exit(Main(os.Args[1:], os.Stdout, os.Stderr))
}
