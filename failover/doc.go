// Package failover will hold the uplink prober (pingu semantics): it probes
// each ISP uplink through its own routing table, removes a failed uplink's
// default route, restores it on recovery, and tells NHRP and IPsec that the
// local NBMA address changed so spokes re-register at once.
//
// The package is empty until the uplink failover capability is built.
package failover
