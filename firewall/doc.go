// Package firewall is the node's nftables policy: awall's DMVPN policies
// (GRE only under IPsec, IKE, ESP and path-MTU ICMP from the uplinks, BGP
// only on the tunnel, management never from an uplink, MSS clamped to the
// tunnel's path MTU, zones by interface, the uplinks' connection marks and
// NAT) compiled by Build into one `inet dmvpn` table, which a Table
// replaces whole in one netlink batch (google/nftables, never the nft
// command). Ruleset.Text renders exactly what the kernel will list, for
// review (dmvpnctl firewall translate).
//
// Subpackage redirect installs the hub's redirect-detection rule in a
// table of its own and reads it over NFLOG.
package firewall
