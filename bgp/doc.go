// Package bgp is the embedded BGP speaker (GoBGP v4, in process, no gRPC
// port): on a hub it makes every spoke whose NHRP registration was
// authorised a neighbour, with the remote AS and the import filter its
// certificate names (OU=AS=, OU=NET=), peers with the other hubs, and
// originates a summary of the spoke networks toward spokes (DMVPN phase 3)
// or reflects the specific routes with their next hop (phase 2); on a spoke
// it peers with every next hop server that is up and announces its
// networks. Whatever a certificate says, the default route, prefixes
// covering a hub's NBMA address or overlapping the tunnel network, and more
// than a configured number of prefixes per neighbour are refused, counted
// and audited.
//
// The Controller owns the neighbour set: NHRP events (nhrp.Observer) and
// snapshots of the engine say which neighbours should exist; the Speaker
// (GoBGP behind a small interface, with an in-memory fake in the tests)
// runs the sessions. Best paths become desired kernel routes handed whole
// to a RouteSink (the host-state owner): this package never writes the
// kernel itself.
package bgp
