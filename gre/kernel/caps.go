package kernel

import "github.com/opendmvpn/dmvpn/gre"

// Caps are the kernel data plane's capabilities: ip_gre sends and
// receives GRE through the IP stack (rules and xfrm apply), its
// neighbours are the kernel's, and a kernel with ip_gre has xfrm ESP.
var Caps = gre.Capabilities{KernelNeighbors: true, XfrmESP: true, RoutedGRE: true, KernelESPByDefault: true}
