//go:build !linux

package hosttest

import "github.com/opendmvpn/dmvpn/host"

// runBuild runs the table's Build with no batch (nftables is Linux's).
func runBuild(t host.NFTable) error { return t.Build(nil, nil) }
