package userspace

import (
	"sync"

	"github.com/opendmvpn/dmvpn/gre"
)

// Caps are the userspace data plane's capabilities: its raw GRE socket's
// packets go through the kernel's IP output and input (xfrm applies on
// both; sends are routed as protocol 47) where the kernel routes raw
// sends by their protocol (ProtoRouted). Its neighbours are its own.
func Caps() gre.Capabilities {
	routed := protoRouted()
	return gre.Capabilities{XfrmESP: routed, RoutedGRE: routed}
}

// protoRouted is ProtoRouted asked once: it is the running kernel's
// property, and Device.Info (which the engine reads per registration)
// would otherwise open a socket and probe it on every call — at 100,000
// spokes registering, a quarter of the hub's time.
var protoRouted = sync.OnceValue(ProtoRouted)
