package userspace

import "github.com/opendmvpn/dmvpn/gre"

// Caps are the userspace data plane's capabilities: its raw GRE socket's
// packets go through the kernel's IP output and input (xfrm applies on
// both; sends are routed as protocol 47) where the kernel routes raw
// sends by their protocol (ProtoRouted). Its neighbours are its own.
func Caps() gre.Capabilities {
	routed := ProtoRouted()
	return gre.Capabilities{XfrmESP: routed, RoutedGRE: routed}
}
