package ebpf

import (
	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/gre/userspace"
)

// Caps are the ebpf data plane's capabilities: a TC fast path that
// redirects GRE past the IP stack (so past xfrm: no kernel ESP), over
// the userspace backend's slow path.
func Caps() gre.Capabilities {
	return gre.Capabilities{FastPath: true, RoutedGRE: userspace.ProtoRouted()}
}
