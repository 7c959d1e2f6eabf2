//go:build !linux

package host

// NFTBuilder adds a table's content; nftables exists on Linux only, where
// it is func(c *nftables.Conn, t *nftables.Table) error.
type NFTBuilder = func(c, t any) error
