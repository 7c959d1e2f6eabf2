package config

import (
	"net/netip"
	"slices"
	"time"

	"go.yaml.in/yaml/v4"

	"github.com/opendmvpn/dmvpn/bgp"
)

// BGP is the bgp section: the embedded speaker. Without the section the
// node runs no BGP.
type BGP struct {
	// AS is this node's AS (a spoke's: its certificate's OU=AS=); HubAS
	// the hubs' (65000), a hub's own.
	AS    uint32
	HubAS uint32
	// Mode is ebgp (each spoke its own AS) or ibgp (the hubs route
	// reflectors, every node in HubAS).
	Mode     string
	RouterID netip.Addr
	// Hubs are the other hubs' tunnel addresses (hubs).
	Hubs []netip.Addr
	// Networks are announced; empty on a spoke means the top-level
	// networks. Summary (hubs) is announced to spokes instead of the
	// specific routes it covers (phase 3).
	Networks []netip.Prefix
	Summary  []netip.Prefix
	// Phase is 3 (summary to spokes) or 2 (specific routes, next hop
	// unchanged).
	Phase int
	// Redistribute names kinds of own routes announced too, only those
	// inside RedistributeWithin.
	Redistribute       []string
	RedistributeWithin []netip.Prefix
	// MaxPrefixLength (le) and MaxPrefixes per spoke neighbour.
	MaxPrefixLength int
	MaxPrefixes     int
	// MaxNeighbors bounds a hub's spoke neighbours.
	MaxNeighbors int
	// Keepalive, HoldTime and ConnectRetry are the session timers;
	// GracefulRestart the restart time (0: off).
	Keepalive       time.Duration
	HoldTime        time.Duration
	ConnectRetry    time.Duration
	GracefulRestart time.Duration
	// Multipath installs equal paths through several neighbours as one
	// ECMP route.
	Multipath bool
	// Protocol is the kernel route protocol number of BGP's routes.
	Protocol int
	// Port is the TCP port.
	Port int
	// Protect lists more NBMA addresses no neighbour may route (the hubs'
	// are protected already).
	Protect []netip.Addr
	// Spokes and DefaultSpoke give spokes' AS and networks without IPsec.
	Spokes       []BGPSpoke
	DefaultSpoke *BGPSpoke
}

// BGPSpoke is a spoke's AS and networks without a certificate.
type BGPSpoke struct {
	Address  netip.Addr
	AS       uint32
	Networks []netip.Prefix
}

// BGP defaults.
const (
	DefaultBGPProtocol        = 186 // RTPROT_BGP
	DefaultBGPGracefulRestart = 120 * time.Second
)

// bgpSection decodes the bgp section.
func (d *decoder) bgpSection(n *yaml.Node, p string, c *Config) {
	s := &BGP{}
	c.BGP = s
	asn := func(out *uint32) func(*yaml.Node, string) {
		return func(n *yaml.Node, p string) {
			var v int64
			if d.integer(n, p, 1, 4294967295, &v) {
				*out = uint32(v)
			}
		}
	}
	prefixes := func(out *[]netip.Prefix) func(*yaml.Node, string) {
		return func(n *yaml.Node, p string) {
			d.seq(n, p, func(_ int, item *yaml.Node, p string) {
				var v netip.Prefix
				if d.prefix(item, p, false, &v) {
					*out = append(*out, v)
				}
			})
		}
	}
	addrs := func(out *[]netip.Addr) func(*yaml.Node, string) {
		return func(n *yaml.Node, p string) {
			d.seq(n, p, func(_ int, item *yaml.Node, p string) {
				var v netip.Addr
				if d.addr(item, p, &v) {
					*out = append(*out, v)
				}
			})
		}
	}
	spoke := func(sp *BGPSpoke, withAddr bool) fields {
		f := fields{
			"as":       asn(&sp.AS),
			"networks": prefixes(&sp.Networks),
		}
		if withAddr {
			f["address"] = func(n *yaml.Node, p string) { d.addr(n, p, &sp.Address) }
		}
		return f
	}
	d.mapping(n, p, fields{
		"as":        asn(&s.AS),
		"hub_as":    asn(&s.HubAS),
		"mode":      func(n *yaml.Node, p string) { d.oneOf(n, p, &s.Mode, "ebgp", "ibgp") },
		"router_id": func(n *yaml.Node, p string) { d.addr(n, p, &s.RouterID) },
		"hubs":      addrs(&s.Hubs),
		"networks":  prefixes(&s.Networks),
		"summary":   prefixes(&s.Summary),
		"phase":     func(n *yaml.Node, p string) { d.intField(n, p, 2, 3, &s.Phase) },
		"redistribute": func(n *yaml.Node, p string) {
			d.seq(n, p, func(_ int, item *yaml.Node, p string) {
				var v string
				if d.oneOf(item, p, &v, "connected", "static") {
					s.Redistribute = append(s.Redistribute, v)
				}
			})
		},
		"redistribute_within": prefixes(&s.RedistributeWithin),
		"max_prefix_length":   func(n *yaml.Node, p string) { d.intField(n, p, 8, 32, &s.MaxPrefixLength) },
		"max_prefixes":        func(n *yaml.Node, p string) { d.intField(n, p, 1, 100000, &s.MaxPrefixes) },
		"max_neighbors":       func(n *yaml.Node, p string) { d.intField(n, p, 1, 100000, &s.MaxNeighbors) },
		"keepalive":           func(n *yaml.Node, p string) { d.duration(n, p, time.Second, time.Hour, &s.Keepalive) },
		"hold_time":           func(n *yaml.Node, p string) { d.duration(n, p, 3*time.Second, 3*time.Hour, &s.HoldTime) },
		"connect_retry":       func(n *yaml.Node, p string) { d.duration(n, p, time.Second, time.Hour, &s.ConnectRetry) },
		"graceful_restart":    func(n *yaml.Node, p string) { d.duration(n, p, 0, time.Hour, &s.GracefulRestart) },
		"protocol":            func(n *yaml.Node, p string) { d.intField(n, p, 5, 255, &s.Protocol) },
		"multipath":           func(n *yaml.Node, p string) { d.boolean(n, p, &s.Multipath) },
		"port":                func(n *yaml.Node, p string) { d.intField(n, p, 1, 65535, &s.Port) },
		"protect":             addrs(&s.Protect),
		"spokes": func(n *yaml.Node, p string) {
			d.seq(n, p, func(_ int, item *yaml.Node, p string) {
				sp := BGPSpoke{}
				d.mapping(item, p, spoke(&sp, true))
				s.Spokes = append(s.Spokes, sp)
			})
		},
		"default_spoke": func(n *yaml.Node, p string) {
			sp := &BGPSpoke{}
			d.mapping(n, p, spoke(sp, false))
			s.DefaultSpoke = sp
		},
	})
}

// bgpDefaults fills the section's defaults.
func (c *Config) bgpDefaults(d *decoder) {
	s := c.BGP
	if s == nil {
		return
	}
	if !d.has("bgp.graceful_restart") {
		s.GracefulRestart = DefaultBGPGracefulRestart
	}
	if s.HubAS == 0 {
		s.HubAS = bgp.DefaultHubAS
	}
	if s.Mode == "" {
		s.Mode = "ebgp"
	}
	if s.AS == 0 && (c.Role == "hub" || s.Mode == "ibgp") {
		s.AS = s.HubAS
	}
	if s.Phase == 0 {
		s.Phase = 3
	}
	if s.MaxPrefixLength == 0 {
		s.MaxPrefixLength = bgp.DefaultMaxPrefixLen
	}
	if s.MaxPrefixes == 0 {
		s.MaxPrefixes = bgp.DefaultMaxPrefixes
	}
	if s.MaxNeighbors == 0 {
		s.MaxNeighbors = bgp.DefaultMaxNeighbors
	}
	if s.Keepalive == 0 {
		s.Keepalive = bgp.DefaultKeepalive
	}
	if s.HoldTime == 0 {
		s.HoldTime = bgp.DefaultHold
	}
	if s.ConnectRetry == 0 {
		s.ConnectRetry = bgp.DefaultConnectRetry
	}
	if s.Protocol == 0 {
		s.Protocol = DefaultBGPProtocol
	}
	if s.Port == 0 {
		s.Port = bgp.DefaultPort
	}
}

// bgpChecks checks the section against the rest of the file; the
// speaker's own checks run on the result, their errors at the section.
func (c *Config) bgpChecks(d *decoder) {
	s := c.BGP
	if s == nil {
		return
	}
	if c.Role == "spoke" && s.AS == 0 && !d.has("bgp.as") {
		d.errorAt("bgp", "a spoke needs its AS (bgp.as: its certificate's OU=AS=)")
	}
	if c.Role == "hub" && d.has("bgp.as") && s.AS != s.HubAS {
		d.errorAt("bgp.as", "a hub's AS is the hubs' AS %d (hub_as)", s.HubAS)
	}
	if c.Role == "spoke" {
		for _, k := range []string{"hubs", "summary", "spokes", "default_spoke"} {
			if d.has("bgp." + k) {
				d.errorAt("bgp."+k, "%s is for hubs", k)
			}
		}
	}
	if s.Mode == "ibgp" && d.has("bgp.as") && s.AS != s.HubAS {
		d.errorAt("bgp.as", "in ibgp mode every node is in the hubs' AS %d", s.HubAS)
	}
	if s.Keepalive >= s.HoldTime && !d.failed("bgp.keepalive") && !d.failed("bgp.hold_time") {
		d.errorAt("bgp.keepalive", "keepalive %v must be shorter than hold_time %v", s.Keepalive, s.HoldTime)
	}
	if len(s.Redistribute) > 0 && len(s.RedistributeWithin) == 0 {
		d.errorAt("bgp.redistribute", "redistribute needs redistribute_within (the prefixes it may announce)")
	}
	tun := c.Tunnel.Address.Masked()
	for i, h := range s.Hubs {
		if tun.IsValid() && !tun.Contains(h) {
			d.errorAt(index("bgp.hubs", i), "%s is outside the tunnel network %s", h, tun)
		}
		if h == c.Tunnel.Address.Addr() {
			d.errorAt(index("bgp.hubs", i), "%s is this node's own address", h)
		}
	}
	seen := map[netip.Addr]bool{}
	for i, sp := range s.Spokes {
		p := index("bgp.spokes", i)
		switch {
		case !sp.Address.IsValid() && !d.failed(p+".address"):
			d.errorAt(p, "a spoke needs its address")
		case seen[sp.Address]:
			d.errorAt(p+".address", "%s is listed twice", sp.Address)
		case tun.IsValid() && !tun.Contains(sp.Address):
			d.errorAt(p+".address", "%s is outside the tunnel network %s", sp.Address, tun)
		}
		seen[sp.Address] = true
		if sp.AS == 0 && !d.failed(p+".as") {
			d.errorAt(p, "a spoke needs its as")
		}
	}
	if s.DefaultSpoke != nil && s.DefaultSpoke.AS == 0 && !d.failed("bgp.default_spoke.as") {
		d.errorAt("bgp.default_spoke", "default_spoke needs an as")
	}
	if c.Role == "hub" && c.IPsec == nil && len(s.Spokes) == 0 && s.DefaultSpoke == nil {
		d.warnAt("bgp", "without ipsec and without spokes or default_spoke no spoke can become a neighbour")
	}
	if len(d.errs) > 0 {
		return
	}
	for i, p := range slices.Concat(s.Networks, s.Summary) {
		what, j := "bgp.networks", i
		if i >= len(s.Networks) {
			what, j = "bgp.summary", i-len(s.Networks)
		}
		if p.Masked() != p {
			d.errorAt(index(what, j), "%s has host bits set (%s)", p, p.Masked())
		}
	}
	if err := c.bgpConfig().WithDefaults().Validate(); err != nil && len(d.errs) == 0 {
		d.errorAt("bgp", "%v", err)
	}
}

// bgpConfig returns the speaker's configuration, or nil without the
// section.
func (c *Config) bgpConfig() *bgp.Config {
	s := c.BGP
	if s == nil {
		return nil
	}
	b := &bgp.Config{
		AS: s.AS, HubAS: s.HubAS, RouterID: s.RouterID, Tunnel: c.Tunnel.Address, Port: s.Port,
		Hubs: slices.Clone(s.Hubs), Networks: slices.Clone(s.Networks), Summary: slices.Clone(s.Summary),
		Phase2: s.Phase == 2, Redistribute: slices.Clone(s.Redistribute), RedistributeWithin: slices.Clone(s.RedistributeWithin),
		MaxPrefixLen: s.MaxPrefixLength, MaxPrefixes: s.MaxPrefixes, MaxNeighbors: s.MaxNeighbors,
		Keepalive: s.Keepalive, Hold: s.HoldTime, ConnectRetry: s.ConnectRetry, RestartTime: s.GracefulRestart,
		UseCertificates: c.IPsec != nil, Multipath: s.Multipath,
	}
	if c.Role == "hub" {
		b.Role = bgp.RoleHub
	}
	if s.Mode == "ibgp" {
		b.Mode = bgp.ModeIBGP
	}
	if len(b.Networks) == 0 && c.Role == "spoke" {
		b.Networks = slices.Clone(c.Networks)
	}
	// A prefix covering a hub's NBMA address would route the tunnel into
	// itself: the servers' addresses, the static maps' and any listed.
	for _, n := range c.Tunnel.NHS {
		if n.NBMA.IsValid() {
			b.ProtectedNBMA = append(b.ProtectedNBMA, n.NBMA)
		}
	}
	for _, m := range c.Tunnel.StaticMaps {
		b.ProtectedNBMA = append(b.ProtectedNBMA, m.NBMA)
	}
	if c.Tunnel.Source.IsValid() {
		b.ProtectedNBMA = append(b.ProtectedNBMA, c.Tunnel.Source)
	}
	b.ProtectedNBMA = append(b.ProtectedNBMA, s.Protect...)
	if len(s.Spokes) > 0 {
		b.Spokes = map[netip.Addr]bgp.SpokeAuth{}
		for _, sp := range s.Spokes {
			b.Spokes[sp.Address] = bgp.SpokeAuth{AS: sp.AS, Networks: slices.Clone(sp.Networks)}
		}
	}
	if s.DefaultSpoke != nil {
		b.DefaultSpoke = &bgp.SpokeAuth{AS: s.DefaultSpoke.AS, Networks: slices.Clone(s.DefaultSpoke.Networks)}
	}
	return b
}

// renderBGP renders the section for show running-config.
func renderBGP(s *BGP) *yaml.Node {
	m := mapNode("as", num(int(s.AS)), "hub_as", num(int(s.HubAS)), "mode", str(s.Mode))
	if s.RouterID.IsValid() {
		m.add("router_id", str(s.RouterID.String()))
	}
	if len(s.Hubs) > 0 {
		m.add("hubs", addrList(s.Hubs))
	}
	if len(s.Networks) > 0 {
		m.add("networks", prefixList(s.Networks))
	}
	if len(s.Summary) > 0 {
		m.add("summary", prefixList(s.Summary))
	}
	m.add("phase", num(s.Phase))
	if len(s.Redistribute) > 0 {
		seq := &yaml.Node{Kind: yaml.SequenceNode}
		for _, r := range s.Redistribute {
			seq.Content = append(seq.Content, str(r))
		}
		m.add("redistribute", seq)
	}
	if len(s.RedistributeWithin) > 0 {
		m.add("redistribute_within", prefixList(s.RedistributeWithin))
	}
	m.add("max_prefix_length", num(s.MaxPrefixLength))
	m.add("max_prefixes", num(s.MaxPrefixes))
	m.add("max_neighbors", num(s.MaxNeighbors))
	m.add("keepalive", raw(durationString(s.Keepalive)))
	m.add("hold_time", raw(durationString(s.HoldTime)))
	m.add("connect_retry", raw(durationString(s.ConnectRetry)))
	m.add("graceful_restart", raw(durationString(s.GracefulRestart)))
	m.add("protocol", num(s.Protocol))
	m.add("multipath", boolean(s.Multipath))
	m.add("port", num(s.Port))
	if len(s.Protect) > 0 {
		m.add("protect", addrList(s.Protect))
	}
	spoke := func(sp BGPSpoke, withAddr bool) *yaml.Node {
		n := mapNode()
		if withAddr {
			n.add("address", str(sp.Address.String()))
		}
		n.add("as", num(int(sp.AS)))
		if len(sp.Networks) > 0 {
			n.add("networks", prefixList(sp.Networks))
		}
		return n.Node
	}
	if len(s.Spokes) > 0 {
		seq := &yaml.Node{Kind: yaml.SequenceNode}
		for _, sp := range s.Spokes {
			seq.Content = append(seq.Content, spoke(sp, true))
		}
		m.add("spokes", seq)
	}
	if s.DefaultSpoke != nil {
		m.add("default_spoke", spoke(*s.DefaultSpoke, false))
	}
	return m.Node
}

// bgpProtocol is the kernel route protocol number of BGP's routes.
func (c *Config) bgpProtocol() int {
	if c.BGP == nil {
		return 0
	}
	return c.BGP.Protocol
}
