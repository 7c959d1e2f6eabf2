// Package redirect detects traffic a hub relays from its tunnel back into
// its tunnel, the trigger of NHRP redirects (DMVPN phase 3). It installs
// an nftables rule `iifname T oifname T limit … log group N snaplen 128`
// in a table of its own and reads the logged packets over NFLOG; it works
// the same for every data-plane backend, since the kernel forwards the
// inner packets in all of them.
package redirect

import (
	"context"
	"errors"
	"fmt"

	"github.com/opendmvpn/dmvpn/host"
)

// Config describes the watcher.
type Config struct {
	// Interface is the tunnel interface.
	Interface string
	// Group is the NFLOG group.
	Group uint16
	// Rate limits the packets logged per second (in the kernel); the
	// engine limits indications per source and destination on top.
	Rate uint64
	// Table, when set, puts the rule's table in the kernel for the
	// watcher (host, the one owner of kernel host state); without it the
	// watcher writes its table itself (tests).
	Table TableOwner
}

// TableOwner keeps the watcher's table in the kernel: Replace puts the
// table build fills in force in one transaction, Remove deletes it.
type TableOwner interface {
	Replace(ctx context.Context, build host.NFTBuilder) error
	Remove(ctx context.Context) error
}

// ErrConfig wraps configuration errors.
var ErrConfig = errors.New("redirect: invalid config")

func (c *Config) validate() error {
	if c.Interface == "" || len(c.Interface) > 15 {
		return fmt.Errorf("%w: interface %q", ErrConfig, c.Interface)
	}
	if c.Group == 0 {
		return fmt.Errorf("%w: NFLOG group 0 is reserved", ErrConfig)
	}
	return nil
}

// ChainPriority is the priority of the watcher's forward chain: filter
// - 10, ahead of the firewall's forward chain (filter), so that a relayed
// packet is seen, and a redirect sent, whatever the firewall's policy
// does with it afterwards (a drop in any base chain ends the packet; an
// accept in one does not skip another). The rule stays in its own table:
// the firewall replaces its table whole and must not take it along.
const ChainPriority = -10

// TableName returns the nftables table the watcher uses for an interface.
func TableName(iface string) string { return "dmvpn_redirect_" + iface }

// Watcher delivers relayed packets until Close.
type Watcher interface {
	Close() error
}

// Start installs the rule and calls fn with the start of each relayed
// packet (at most 128 bytes), from a goroutine of its own, until ctx is
// done or Close is called. Close removes the rule.
func Start(ctx context.Context, cfg Config, fn func(pkt []byte)) (Watcher, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.Rate == 0 {
		cfg.Rate = 200
	}
	return start(ctx, cfg, fn)
}
