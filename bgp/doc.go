// Package bgp will hold the embedded BGP speaker (GoBGP v4): it peers with
// hubs and spokes over the tunnel, adds a neighbour when NHRP reports a
// registration authorised by the peer's certificate (OU=AS=, OU=NET=),
// removes it when the registration expires, and installs best paths into
// the kernel through netlink with their own protocol number.
//
// The package is empty until the BGP capability is built.
package bgp
