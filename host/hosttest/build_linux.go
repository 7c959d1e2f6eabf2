//go:build linux

package hosttest

import (
	"github.com/google/nftables"

	"github.com/opendmvpn/dmvpn/host"
)

// runBuild runs the table's Build against a batch that is never flushed
// (no kernel is reached).
func runBuild(t host.NFTable) error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	tab := c.AddTable(&nftables.Table{Family: nftables.TableFamily(t.Family), Name: t.Name})
	return t.Build(c, tab)
}
