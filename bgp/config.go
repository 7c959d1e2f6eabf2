package bgp

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// Role is what the node is in the cloud.
type Role uint8

// Roles.
const (
	RoleSpoke Role = iota
	RoleHub
)

func (r Role) String() string {
	if r == RoleHub {
		return "hub"
	}
	return "spoke"
}

// Mode is how spokes and hubs peer.
type Mode uint8

// Modes.
const (
	// ModeEBGP is the Alpine guide's design: the hubs share one AS and
	// peer with each other over iBGP, every spoke has its own AS.
	ModeEBGP Mode = iota
	// ModeIBGP puts every node in the hubs' AS, the hubs acting as route
	// reflectors with the spokes as their clients (VyOS's and FRR's
	// design).
	ModeIBGP
)

func (m Mode) String() string {
	if m == ModeIBGP {
		return "ibgp"
	}
	return "ebgp"
}

// Defaults.
const (
	DefaultHubAS        = 65000
	DefaultPort         = 179
	DefaultMaxPrefixLen = 26
	DefaultMaxPrefixes  = 100
	// DefaultMaxNeighbors bounds a hub's spoke neighbours: a GoBGP
	// neighbour costs about 350 KiB (make bench-bgp), so 2,000 are
	// about 700 MiB.
	DefaultMaxNeighbors = 2000
	DefaultKeepalive    = 10 * time.Second
	DefaultHold         = 30 * time.Second
	DefaultConnectRetry = 5 * time.Second
	DefaultRestartTime  = 120 * time.Second
)

// SpokeAuth is what a spoke may be without a certificate to say it: its
// AS and the networks it may announce. Without IPsec the configuration
// gives it, per spoke or as a default, and it goes through the same
// checks as a certificate's fields.
type SpokeAuth struct {
	AS       uint32
	Networks []netip.Prefix
}

// Config configures the speaker of a node.
type Config struct {
	Role Role
	Mode Mode
	// AS is this node's AS; RouterID defaults to the tunnel address.
	AS       uint32
	RouterID netip.Addr
	// HubAS is the AS of the hubs (a spoke peers with its servers in it).
	HubAS uint32
	// Tunnel is this node's tunnel address with the tunnel network's
	// length: the speaker listens on that address only, and prefixes
	// overlapping that network are refused.
	Tunnel netip.Prefix
	// Port is the TCP port (179); -1 does not listen (tests).
	Port int
	// Hubs are the other hubs a hub peers with (tunnel addresses, in
	// HubAS).
	Hubs []netip.Addr
	// ProtectedNBMA are the hubs' NBMA addresses: a prefix covering one is
	// refused from every neighbour (it would route the tunnel into
	// itself).
	ProtectedNBMA []netip.Addr
	// Networks are announced as they are; Summary (hubs) is announced to
	// spokes instead of the specific routes it covers (phase 3).
	Networks []netip.Prefix
	Summary  []netip.Prefix
	// Phase2 reflects the spokes' specific routes to the spokes with
	// their next hop unchanged instead of the summary.
	Phase2 bool
	// Redistribute names kinds of the node's own routes announced too
	// ("connected", "static"), only those inside RedistributeWithin.
	Redistribute       []string
	RedistributeWithin []netip.Prefix
	// MaxPrefixLen is the longest prefix accepted inside a spoke's
	// networks (le 26); MaxPrefixes the most prefixes one spoke may send
	// before its session is shut down (hubs and servers carry every
	// spoke's routes: they have no limit).
	MaxPrefixLen int
	MaxPrefixes  int
	// MaxNeighbors bounds a hub's spoke neighbours: a registration past
	// it is refused as a neighbour (counted, audited, listed under show
	// ip bgp summary) and tried again as others go.
	MaxNeighbors int
	// Keepalive, Hold and ConnectRetry are the session timers.
	Keepalive, Hold, ConnectRetry time.Duration
	// RestartTime is the graceful restart time announced and granted; 0
	// turns graceful restart off.
	RestartTime time.Duration
	// Multipath installs paths of equal rank through several neighbours
	// as one ECMP route; off, every node picks one (the lowest router ID
	// among equals, so all spokes use the same hub and the return traffic
	// meets the same stateful firewall).
	Multipath bool
	// HelperOnly keeps the neighbours' routes through their restarts but
	// does not ask them to keep ours: set when this node's forwarding does
	// not survive dmvpnd (a userspace or ebpf data plane, a tunnel
	// removed on stop), so a lost hub's routes go at once instead of
	// black-holing traffic for the restart time.
	HelperOnly bool
	// Spokes and DefaultSpoke give the AS and networks of spokes without
	// IPsec (by tunnel address, else the default); with IPsec the
	// certificate says.
	Spokes       map[netip.Addr]SpokeAuth
	DefaultSpoke *SpokeAuth
	// UseCertificates takes a spoke's AS and networks from its
	// certificate (IPsec); otherwise from Spokes/DefaultSpoke.
	UseCertificates bool
}

// WithDefaults fills the zero fields with their defaults.
func (c Config) WithDefaults() Config {
	if c.HubAS == 0 {
		c.HubAS = DefaultHubAS
	}
	if c.AS == 0 && (c.Role == RoleHub || c.Mode == ModeIBGP) {
		c.AS = c.HubAS
	}
	if !c.RouterID.IsValid() {
		c.RouterID = c.Tunnel.Addr()
	}
	if c.Port == 0 {
		c.Port = DefaultPort
	}
	if c.MaxPrefixLen == 0 {
		c.MaxPrefixLen = DefaultMaxPrefixLen
	}
	if c.MaxPrefixes == 0 {
		c.MaxPrefixes = DefaultMaxPrefixes
	}
	if c.MaxNeighbors == 0 {
		c.MaxNeighbors = DefaultMaxNeighbors
	}
	if c.Keepalive == 0 {
		c.Keepalive = DefaultKeepalive
	}
	if c.Hold == 0 {
		c.Hold = DefaultHold
	}
	if c.ConnectRetry == 0 {
		c.ConnectRetry = DefaultConnectRetry
	}
	return c
}

// Validate checks a configuration (with its defaults filled).
func (c Config) Validate() error {
	var errs []error
	bad := func(f string, a ...any) { errs = append(errs, fmt.Errorf(f, a...)) }
	if !c.Tunnel.IsValid() || !c.Tunnel.Addr().Is4() {
		bad("bgp: the tunnel address must be an IPv4 prefix, not %v", c.Tunnel)
	}
	if c.AS == 0 {
		bad("bgp: the node's AS is not set")
	}
	if c.Mode == ModeIBGP && c.AS != c.HubAS {
		bad("bgp: in ibgp mode the node's AS (%d) must be the hubs' (%d)", c.AS, c.HubAS)
	}
	if c.Role == RoleHub && c.AS != c.HubAS {
		bad("bgp: a hub's AS (%d) must be the hubs' AS (%d)", c.AS, c.HubAS)
	}
	if c.MaxPrefixLen < 1 || c.MaxPrefixLen > 32 {
		bad("bgp: max prefix length %d is not in 1..32", c.MaxPrefixLen)
	}
	if c.MaxNeighbors < 1 {
		bad("bgp: max neighbours %d must be at least 1", c.MaxNeighbors)
	}
	if c.MaxPrefixes < 1 {
		bad("bgp: max prefixes %d must be at least 1", c.MaxPrefixes)
	}
	if c.Hold != 0 && c.Hold < 3*time.Second {
		bad("bgp: hold time %v is below 3 s", c.Hold)
	}
	if c.Keepalive >= c.Hold {
		bad("bgp: keepalive %v must be shorter than the hold time %v", c.Keepalive, c.Hold)
	}
	for _, k := range c.Redistribute {
		if k != "connected" && k != "static" {
			bad("bgp: redistribute %q is neither connected nor static", k)
		}
	}
	if c.Role == RoleSpoke && len(c.Summary) > 0 {
		bad("bgp: only hubs originate a summary")
	}
	for _, p := range slices.Concat(c.Networks, c.Summary) {
		if why := c.bogon(p); why != "" {
			bad("bgp: %s cannot be announced: %s", p, why)
		}
	}
	if c.Tunnel.IsValid() && slices.Contains(c.Hubs, c.Tunnel.Addr()) {
		bad("bgp: the hub list holds this node's own address %s", c.Tunnel.Addr())
	}
	return errors.Join(errs...)
}

// bogon says why a prefix is refused from any neighbour whatever its
// certificate says, or "".
func (c Config) bogon(p netip.Prefix) string {
	p = p.Masked()
	switch {
	case !p.Addr().Is4():
		return "not IPv4"
	case p.Bits() == 0:
		return "the default route"
	case c.Tunnel.IsValid() && p.Overlaps(c.Tunnel.Masked()):
		return fmt.Sprintf("overlaps the tunnel network %s", c.Tunnel.Masked())
	}
	for _, a := range c.ProtectedNBMA {
		if p.Contains(a) {
			return fmt.Sprintf("covers the NBMA address %s of a hub", a)
		}
	}
	return ""
}
