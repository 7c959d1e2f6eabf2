//go:build !linux

package firewall

import "github.com/opendmvpn/dmvpn/host"

// Owner is what the firewall owns in the host state.
func Owner() host.Owner {
	return host.Owner{Name: "firewall", Tables: []host.TableID{
		{Family: host.TableINet, Name: TableName}, {Family: host.TableINet, Name: checkTable}}}
}

// NewHostTable returns the Table that applies the firewall through c;
// off Linux every call fails.
func NewHostTable(c *host.Client) Table { return kernelTable{} }
