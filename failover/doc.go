// Package failover is the uplink prober and failover of a node (pingu's
// job, sub-second): it probes each ISP uplink through that uplink only,
// decides its state with hysteresis, and computes the kernel state that
// follows — each uplink's own table and rules (kept whatever its state, so
// probing goes on), the main table's default route over the preferred
// uplinks that are up (weighted multipath when several share the
// preference), the multipath and reverse-path sysctls — which the
// host-state owner applies. It ends the tracked connections of an uplink
// that went down and reports when this node's NBMA address moved, so
// IPsec and NHRP follow.
//
// One goroutine owns the probing state (Monitor.Run); timers are the time
// package's, so tests run it under testing/synctest with in-memory
// probers, kernel and host.
package failover
