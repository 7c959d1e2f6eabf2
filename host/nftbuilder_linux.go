//go:build linux

package host

import "github.com/google/nftables"

// NFTBuilder adds a table's chains, sets and rules to c; the table t is
// already added to c. It must not call Flush: the Manager does, once, so
// that the replacement is one transaction.
type NFTBuilder = func(c *nftables.Conn, t *nftables.Table) error
