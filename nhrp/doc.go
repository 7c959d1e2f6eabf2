// Package nhrp is the NHRP engine of a DMVPN node: the next hop client of a
// spoke (registration with its next hop servers), the next hop server of a
// hub (registrations, resolution, forwarding, redirects), resolution and
// shortcuts for DMVPN phases 2 and 3, purge, error indications, and the
// NHRP cache.
//
// The engine owns its state in one goroutine; every other goroutine talks
// to it through requests that honour a context. It reaches the rest of the
// system only through small interfaces it declares: a Tunnel (the data
// plane: NHRP packets, neighbour entries, routes, neighbour misses), a
// Router (how an address is routed), an Authorizer (the registration
// policy; the IPsec certificate check plugs in here), a PeerHandler (peer
// up and down: the IPsec bring-up point) and Observers (registrations,
// shortcuts, NHS state for BGP, metrics and the shell).
package nhrp
