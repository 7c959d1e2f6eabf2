// Package firewall will hold the node's nftables ruleset, applied
// atomically through netlink (google/nftables): GRE accepted only when IPsec
// protected it, MSS clamping on the tunnel, per-uplink connection marks and
// NAT on the uplinks.
//
// The package is empty until the firewall capability is built.
package firewall
