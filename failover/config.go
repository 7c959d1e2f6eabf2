package failover

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// Defaults.
const (
	DefaultInterval        = 250 * time.Millisecond
	DefaultTimeout         = 200 * time.Millisecond
	DefaultDownAfter       = 3
	DefaultRepliesRequired = 4
	DefaultHostsRequired   = 1
	DefaultRetries         = 4
	DefaultWeight          = 1
	// DefaultRulePriority is the first policy rule priority of the
	// uplinks: after the IPsec rules (219–222) and the shortcut table's
	// (1000), before the main table (32766).
	DefaultRulePriority = 1100
	// DefaultTableBase + 1 is the first uplink's routing table when none is
	// configured (101, 102, …: clear of the shortcut table 42 and charon's
	// 220).
	DefaultTableBase = 100
	// DefaultProtocol is the route protocol number of the routes the
	// uplinks put in the kernel.
	DefaultProtocol = 44
	// DefaultMarkMask is the part of the packet and connection mark the
	// uplinks use: it leaves charon's 0x42 alone (the firewall's
	// DefaultMarkMask).
	DefaultMarkMask = 0x0000ff00
	// MaxWeight is the largest multipath weight the kernel takes.
	MaxWeight = 256
	// MaxUplinks is the most uplinks a node has: the rule priorities of
	// that many are the uplinks' from the start, so a reload can add one.
	MaxUplinks = 16
)

// ErrConfig wraps configuration errors.
var ErrConfig = errors.New("failover: invalid configuration")

// Config is the uplink failover of a node: its ISP uplinks, how they are
// probed, and where their routes, rules and marks go.
type Config struct {
	Uplinks []Uplink
	// RulePriority is the first of the policy rule priorities (see Rules).
	RulePriority int
	// Protocol is the route protocol number of the routes.
	Protocol int
	// MarkMask is the mask of the uplinks' marks within the packet and
	// connection mark.
	MarkMask uint32
}

// Uplink is one ISP uplink.
type Uplink struct {
	// Name labels the uplink ("isp1"): logs, the shell, metrics.
	Name string
	// Interface carries the uplink.
	Interface string
	// Gateway is the ISP's router; invalid: learnt from the kernel's
	// routes (the default route through Interface).
	Gateway netip.Addr
	// Table is the uplink's own routing table: it keeps the uplink's
	// default route whatever its state, so probing goes on through it.
	Table int
	// Mark is the uplink's connection mark (within Config.MarkMask):
	// flows that left through it are routed through it until they end.
	Mark uint32
	// Probes are the hosts probed through the uplink (ICMP echo).
	Probes []netip.Addr
	// Interval is the time between probe rounds; Timeout how long each
	// request waits for its reply (at most Interval).
	Interval time.Duration
	Timeout  time.Duration
	// Retries is how many more requests a round sends to a host that has
	// not answered yet, spread over the first half of the timeout, each
	// counted when its reply comes within the timeout of its own sending
	// (-1 in a configuration means none; 0 is the default). A round at
	// 20% loss then misses a host only when every request or reply of it
	// is lost; 4 make a simulated day at 20% loss each way with one probe
	// host free of false downs (2: 34–46 a day).
	Retries int
	// DownAfter is how many rounds in a row without enough replies take
	// the uplink down (a round still without enough replies a timeout
	// after it started has the next start at once, without waiting for
	// the interval); RepliesRequired how many rounds in a row
	// with enough replies bring it back (the hysteresis).
	DownAfter       int
	RepliesRequired int
	// HostsRequired is how many probe hosts must answer in a round for
	// it to count (pingu's required-hosts-online).
	HostsRequired int
	// Weight is the uplink's share of new flows when several uplinks
	// balance (1–256).
	Weight int
	// Preference orders uplinks: the up uplinks with the lowest value
	// carry the default route (several: weighted multipath); the others
	// stand by.
	Preference int
	// Masquerade has the firewall masquerade the LAN zone's traffic that
	// leaves through the uplink (never the router's own: IKE, ESP and the
	// probes leave from its address).
	Masquerade bool
}

// WithDefaults returns the configuration with zero fields set to their
// defaults.
func (c Config) WithDefaults() Config {
	if c.RulePriority == 0 {
		c.RulePriority = DefaultRulePriority
	}
	if c.Protocol == 0 {
		c.Protocol = DefaultProtocol
	}
	if c.MarkMask == 0 {
		c.MarkMask = DefaultMarkMask
	}
	c.Uplinks = slices.Clone(c.Uplinks)
	shift := lowestBit(c.MarkMask)
	for i := range c.Uplinks {
		u := &c.Uplinks[i]
		if u.Name == "" {
			u.Name = u.Interface
		}
		if u.Table == 0 {
			u.Table = DefaultTableBase + 1 + i
		}
		if u.Mark == 0 {
			u.Mark = uint32(i+1) << shift
		}
		if u.Interval == 0 {
			u.Interval = DefaultInterval
		}
		if u.Timeout == 0 {
			u.Timeout = min(DefaultTimeout, u.Interval)
		}
		switch u.Retries {
		case 0:
			u.Retries = DefaultRetries
		case -1:
			u.Retries = 0
		}
		if u.DownAfter == 0 {
			u.DownAfter = DefaultDownAfter
		}
		if u.RepliesRequired == 0 {
			u.RepliesRequired = DefaultRepliesRequired
		}
		if u.HostsRequired == 0 {
			u.HostsRequired = DefaultHostsRequired
		}
		if u.Weight == 0 {
			u.Weight = DefaultWeight
		}
	}
	return c
}

// lowestBit is the position of the lowest set bit of m (0 for 0).
func lowestBit(m uint32) int {
	for i := range 32 {
		if m&(1<<i) != 0 {
			return i
		}
	}
	return 0
}

// Validate reports every problem of a configuration with its defaults
// filled in, at once.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrConfig}, args...)...))
	}
	if c.MarkMask&0x42 != 0 {
		bad("mark mask %#x overlaps charon's mark 0x42", c.MarkMask)
	}
	if c.RulePriority < 223 || c.RulePriority+rulesPerUplink*MaxUplinks+rulesFirst > 32766 {
		bad("rule priority %d: the uplinks' rules (%d of them) must fall between 223 and 32765", c.RulePriority, rulesPerUplink*MaxUplinks+rulesFirst)
	}
	if len(c.Uplinks) > MaxUplinks {
		bad("%d uplinks: at most %d", len(c.Uplinks), MaxUplinks)
	}
	names, ifs, tables, marks := map[string]bool{}, map[string]bool{}, map[int]bool{}, map[uint32]bool{}
	for i, u := range c.Uplinks {
		at := fmt.Sprintf("uplink %d (%s)", i, u.Name)
		switch {
		case u.Interface == "" || len(u.Interface) > 15:
			bad("%s: interface %q: 1-15 bytes", at, u.Interface)
		case ifs[u.Interface]:
			bad("%s: interface %s is used by another uplink", at, u.Interface)
		}
		ifs[u.Interface] = true
		if names[u.Name] {
			bad("%s: the name is used by another uplink", at)
		}
		names[u.Name] = true
		if u.Gateway.IsValid() && !u.Gateway.Is4() {
			bad("%s: gateway %s is not IPv4", at, u.Gateway)
		}
		switch {
		case u.Table <= 0 || u.Table >= 253 && u.Table <= 255 || u.Table == 220:
			bad("%s: table %d is reserved (0, 220, 253-255)", at, u.Table)
		case tables[u.Table]:
			bad("%s: table %d is used by another uplink", at, u.Table)
		}
		tables[u.Table] = true
		switch {
		case u.Mark == 0 || u.Mark&^c.MarkMask != 0:
			bad("%s: mark %#x must be non-zero and within the mask %#x", at, u.Mark, c.MarkMask)
		case marks[u.Mark]:
			bad("%s: mark %#x is used by another uplink", at, u.Mark)
		}
		marks[u.Mark] = true
		if len(u.Probes) == 0 {
			bad("%s: no probe hosts", at)
		}
		seen := map[netip.Addr]bool{}
		for _, h := range u.Probes {
			if !h.Is4() || h.IsUnspecified() || h.IsMulticast() {
				bad("%s: probe host %s must be a unicast IPv4 address", at, h)
			}
			if seen[h] {
				bad("%s: probe host %s is listed twice", at, h)
			}
			seen[h] = true
		}
		if u.Interval < 10*time.Millisecond || u.Interval > time.Hour {
			bad("%s: interval %v must be between 10ms and 1h", at, u.Interval)
		}
		if u.Timeout < time.Millisecond || u.Timeout > u.Interval {
			bad("%s: timeout %v must be between 1ms and the interval (%v)", at, u.Timeout, u.Interval)
		}
		if u.Retries < 0 || u.Retries > 4 {
			bad("%s: retries %d must be 0-4", at, u.Retries)
		}
		if u.DownAfter < 1 || u.DownAfter > 100 {
			bad("%s: down_after %d must be 1-100", at, u.DownAfter)
		}
		if u.RepliesRequired < 1 || u.RepliesRequired > 100 {
			bad("%s: replies_required %d must be 1-100", at, u.RepliesRequired)
		}
		if u.HostsRequired < 1 || u.HostsRequired > len(u.Probes) && len(u.Probes) > 0 {
			bad("%s: hosts_required %d must be 1 to the number of probe hosts (%d)", at, u.HostsRequired, len(u.Probes))
		}
		if u.Weight < 1 || u.Weight > MaxWeight {
			bad("%s: weight %d must be 1-%d", at, u.Weight, MaxWeight)
		}
	}
	return errors.Join(errs...)
}
