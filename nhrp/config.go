package nhrp

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Defaults.
const (
	DefaultHoldingTime      = 7200 * time.Second
	DefaultNegativeTTL      = 10 * time.Second
	DefaultRetryMax         = 8 * time.Second
	DefaultDNSRefresh       = 5 * time.Minute
	DefaultShortcutTable    = 42
	DefaultShortcutProto    = 42
	DefaultAuthorizeTimeout = 10 * time.Second
	DefaultPeerUpTimeout    = 15 * time.Second
	// HopCount is the hop count of packets the engine originates, as Cisco
	// IOS sends them (Cisco refuses 0).
	HopCount = 255
)

// Role says whether a node serves registrations.
type Role uint8

// Roles. A hub may also register with next hop servers of its own
// (hierarchical DMVPN).
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

// NHSConfig is one configured next hop server.
type NHSConfig struct {
	// Proto is the server's tunnel address; invalid when it is learned
	// from its replies (the registration is then sent to our own address,
	// as Cisco and FRR do for "dynamic" servers).
	Proto netip.Addr
	// NBMA is the server's NBMA address, or Hostname a DNS name whose
	// A/AAAA records each become a server (re-resolved every DNSRefresh).
	NBMA     netip.Addr
	Hostname string
	// Priority orders servers when MaxNHS limits how many are used: lower
	// is preferred.
	Priority int
}

func (n NHSConfig) String() string {
	s := n.Hostname
	if n.NBMA.IsValid() {
		s = n.NBMA.String()
	}
	if n.Proto.IsValid() {
		s = n.Proto.String() + " nbma " + s
	}
	return s
}

// StaticMap is a configured binding of a tunnel address to an NBMA address.
type StaticMap struct {
	Proto netip.Prefix
	NBMA  netip.Addr
}

// MulticastMode says where packets to multicast tunnel destinations go.
type MulticastMode uint8

// Multicast modes: to nobody, to every registered client (hubs), to every
// NHS (spokes), or to a fixed NBMA list.
const (
	MulticastOff MulticastMode = iota
	MulticastDynamic
	MulticastNHS
	MulticastStatic
)

// Config configures an Engine. The zero value of a field takes its
// default.
type Config struct {
	Role Role
	// HoldingTime advertised in registrations and resolution replies.
	HoldingTime time.Duration
	// RegistrationInterval is how often a spoke refreshes its
	// registrations (Cisco's "registration timeout"); 0 means a third of
	// HoldingTime.
	RegistrationInterval time.Duration
	// MaxRegistrationHolding caps the holding time a hub grants a
	// client's registration (the client asks for up to 65,535 s); the
	// capped value goes back in the reply, so a client that follows it
	// refreshes in time. 0 means the larger of HoldingTime and
	// DefaultHoldingTime: Cisco and FRR spokes ask 7200 s by default and
	// refresh at a third of what they asked, whatever the reply says, so
	// a cap below their holding time would expire them between refreshes.
	MaxRegistrationHolding time.Duration
	// RetryMax caps the registration retry backoff, so a spoke is back
	// within seconds once a lost NHS returns.
	RetryMax time.Duration
	// NoUnique clears the unique flag in registrations (for spokes whose
	// NBMA address changes).
	NoUnique bool
	// AuthPassword is Cisco's cleartext NHRP authentication; when set,
	// packets without it, or with another, are refused.
	AuthPassword []byte
	// NHS lists the next hop servers to register with.
	NHS []NHSConfig
	// MaxNHS limits how many servers are used at once, the preferred
	// (lowest Priority) first; 0 uses all.
	MaxNHS int
	// DNSRefresh is how often NHS host names are re-resolved.
	DNSRefresh time.Duration
	// Redirect makes a hub send Traffic Indications for traffic it relays
	// between clients (phase 3).
	Redirect bool
	// Shortcut makes a node act on Traffic Indications and install
	// shortcut routes (phase 3).
	Shortcut bool
	// ShortcutTable and ShortcutProtocol are the routing table and route
	// protocol number of shortcut routes.
	ShortcutTable, ShortcutProtocol int
	// ShortcutIdle removes a shortcut that carried no traffic for this
	// long; 0 keeps it until its holding time runs out.
	ShortcutIdle time.Duration
	// MinShortcutPrefix refuses resolution replies that advertise a
	// shorter prefix (a reply for 0.0.0.0/0 must not capture all traffic).
	MinShortcutPrefix int
	// NegativeTTL is how long a failed resolution is remembered.
	NegativeTTL time.Duration
	// StaticMaps are bindings that never expire.
	StaticMaps []StaticMap
	// Multicast mode and, for MulticastStatic, the NBMA list.
	Multicast     MulticastMode
	MulticastNBMA []netip.Addr
	// MTU advertised in CIEs; 0 means the tunnel MTU.
	MTU int
	// PurgeOnShutdown sends Purge Requests when the engine stops: a hub
	// tells its clients their registrations are gone (so they register
	// again at once with the restarted hub), a node tells the peers it
	// answered resolutions for.
	PurgeOnShutdown bool
	// KeepKernelState leaves neighbour entries and shortcut routes in the
	// kernel when the engine stops (a quick restart adopts them).
	KeepKernelState bool
	// AuthorizeTimeout and PeerUpTimeout bound the hooks.
	AuthorizeTimeout, PeerUpTimeout time.Duration
	// MaxSend limits the NHRP packets sent per second, like Cisco's
	// max-send; 0 means 10000, what a hub answering a registration storm
	// of thousands of spokes needs.
	MaxSend int
	// Limits bound the engine's state and the work a sender can make it
	// do; zero fields take their defaults.
	Limits Limits
}

// withDefaults returns c with zero fields set to their defaults.
func (c Config) withDefaults() Config {
	if c.HoldingTime == 0 {
		c.HoldingTime = DefaultHoldingTime
	}
	if c.RegistrationInterval == 0 {
		c.RegistrationInterval = c.HoldingTime / 3
	}
	if c.MaxRegistrationHolding == 0 {
		c.MaxRegistrationHolding = max(c.HoldingTime, DefaultHoldingTime)
	}
	if c.RetryMax == 0 {
		c.RetryMax = DefaultRetryMax
	}
	if c.DNSRefresh == 0 {
		c.DNSRefresh = DefaultDNSRefresh
	}
	if c.ShortcutTable == 0 {
		c.ShortcutTable = DefaultShortcutTable
	}
	if c.ShortcutProtocol == 0 {
		c.ShortcutProtocol = DefaultShortcutProto
	}
	if c.MinShortcutPrefix == 0 {
		c.MinShortcutPrefix = 8
	}
	if c.NegativeTTL == 0 {
		c.NegativeTTL = DefaultNegativeTTL
	}
	if c.AuthorizeTimeout == 0 {
		c.AuthorizeTimeout = DefaultAuthorizeTimeout
	}
	if c.PeerUpTimeout == 0 {
		c.PeerUpTimeout = DefaultPeerUpTimeout
	}
	if c.MaxSend == 0 {
		c.MaxSend = 10000
	}
	c.Limits = c.Limits.withDefaults()
	return c
}

// ErrConfig wraps every error of Config.Validate.
var ErrConfig = errors.New("nhrp: invalid config")

// Validate checks the configuration as a whole and reports every problem.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrConfig}, args...)...))
	}
	if c.HoldingTime < 0 || c.HoldingTime > 65535*time.Second {
		bad("holding time %v out of range (1s-65535s)", c.HoldingTime)
	}
	if c.MaxRegistrationHolding < 0 || c.MaxRegistrationHolding > 65535*time.Second {
		bad("maximum registration holding time %v out of range (1s-65535s)", c.MaxRegistrationHolding)
	}
	if c.RegistrationInterval < 0 || (c.HoldingTime > 0 && c.RegistrationInterval >= c.HoldingTime) {
		bad("registration interval %v must be shorter than the holding time", c.RegistrationInterval)
	}
	if len(c.AuthPassword) > 8 {
		bad("authentication password longer than 8 bytes (Cisco's limit)")
	}
	for i, n := range c.NHS {
		if n.NBMA.IsValid() == (n.Hostname != "") {
			bad("nhs %d: give either an NBMA address or a host name", i)
		}
		if n.Priority < 0 || n.Priority > 255 {
			bad("nhs %d: priority %d out of range 0-255", i, n.Priority)
		}
	}
	if c.MaxNHS < 0 {
		bad("max NHS %d is negative", c.MaxNHS)
	}
	for i, m := range c.StaticMaps {
		if !m.Proto.IsValid() || !m.NBMA.IsValid() {
			bad("static map %d: needs a protocol prefix and an NBMA address", i)
		}
	}
	if c.Multicast == MulticastStatic && len(c.MulticastNBMA) == 0 {
		bad("static multicast needs an NBMA list")
	}
	if c.MinShortcutPrefix < 0 || c.MinShortcutPrefix > 128 {
		bad("minimum shortcut prefix %d out of range", c.MinShortcutPrefix)
	}
	c.Limits.validate(bad)
	return errors.Join(errs...)
}

// ShortcutTableOrDefault returns the routing table of shortcut routes.
func (c *Config) ShortcutTableOrDefault() int {
	if c.ShortcutTable == 0 {
		return DefaultShortcutTable
	}
	return c.ShortcutTable
}
