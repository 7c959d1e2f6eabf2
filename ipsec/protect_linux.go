//go:build linux

package ipsec

import "net"

// IngressFilter returns the data plane's ingress check for userspace
// mode: GRE counts only if it came out of charon's ipsec TUN (whatever its
// number: after a crash it may be ipsec1), because kernel-libipsec does no
// inbound policy check of its own.
func IngressFilter() func(ifindex int) bool {
	return func(ifindex int) bool {
		l, err := net.InterfaceByIndex(ifindex)
		return err == nil && len(l.Name) >= 5 && l.Name[:5] == "ipsec"
	}
}
