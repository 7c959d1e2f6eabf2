// Package firewall holds the node's nftables rules, applied atomically
// through netlink (google/nftables), never through the nft command.
//
// Subpackage redirect installs the hub's redirect-detection rule and reads
// it over NFLOG. The rest of the ruleset (GRE accepted only when IPsec
// protected it, MSS clamping on the tunnel, per-uplink marks, NAT on the
// uplinks) comes with the firewall capability.
package firewall
