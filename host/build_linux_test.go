//go:build linux

package host_test

import "github.com/google/nftables"

// build is a firewall table's content: one input chain.
func build(c *nftables.Conn, t *nftables.Table) error {
	c.AddChain(&nftables.Chain{Name: "input", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter})
	return nil
}
