package firewall

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// IPsecMode is how the tunnel is protected, as the firewall needs to know
// it: which GRE counts as protected.
type IPsecMode string

// IPsec modes.
const (
	// IPsecOff: no IPsec; GRE is accepted from the internet zone.
	IPsecOff IPsecMode = ""
	// IPsecKernel: ESP in the kernel (xfrm, transport mode). GRE is
	// accepted only with a secpath (`meta ipsec exists`) and leaves only on
	// a route with an IPsec transform (`rt ipsec missing` is dropped).
	IPsecKernel IPsecMode = "kernel"
	// IPsecUserspace: charon's kernel-libipsec. Decrypted GRE comes out of
	// charon's TUN (Policy.IPsecTUN) and GRE leaves only into it.
	IPsecUserspace IPsecMode = "userspace"
)

// Zone names an awall zone: a set of interfaces, or the router itself.
type Zone string

// Zones.
const (
	// ZoneInternet is the uplinks (Config.Internet and Uplinks).
	ZoneInternet Zone = "internet"
	// ZoneTunnel is the DMVPN tunnel interface.
	ZoneTunnel Zone = "tunnel"
	// ZoneLAN is Config.LAN, or every other interface when it is empty.
	ZoneLAN Zone = "lan"
	// ZoneLocal is the router itself (awall's _fw): rules to it are in
	// the input chain.
	ZoneLocal Zone = "local"
)

// Zones lists the zones a user rule may name.
var Zones = []Zone{ZoneInternet, ZoneTunnel, ZoneLAN, ZoneLocal}

// Verdict is a user rule's action.
type Verdict string

// Verdicts.
const (
	VerdictAccept Verdict = "accept"
	VerdictDrop   Verdict = "drop"
	VerdictReject Verdict = "reject"
)

// Config is the firewall section of a node's configuration.
type Config struct {
	// Internet lists the interfaces of the internet zone besides the
	// uplinks' own (Uplinks).
	Internet []string
	// LAN lists the LAN zone's interfaces; empty means every interface
	// that is not the tunnel, an internet one or loopback.
	LAN []string
	// Rules are the user's rules, tried in order before the defaults.
	Rules []UserRule
	// Baseline is the policy of a node with IPsec and no firewall
	// section: no zones of its own (the uplinks' interfaces, if any, are
	// the internet zone) and no user rules; every chain's policy accepts,
	// and only what keeps DMVPN's own traffic safe is enforced — GRE only
	// under IPsec in and out, BGP only on the tunnel, the management
	// ports never from the uplinks — with the MSS clamp.
	Baseline bool
}

// UserRule is one rule of the configuration: traffic from one zone to
// another (or to the router itself), optionally narrowed by protocol,
// destination ports and addresses.
type UserRule struct {
	From, To Zone
	// Protocol is 0 for any, else an IP protocol number (ProtoTCP, …).
	Protocol uint8
	// Ports are destination ports (tcp and udp only).
	Ports []uint16
	// Source and Destination narrow the rule when valid.
	Source, Destination netip.Prefix
	Action              Verdict
	// Where locates the rule in the configuration ("firewall.rules[2]",
	// with its line) for errors and show firewall.
	Where string
}

// CharonMark is the packet mark charon puts on its own IKE and ESP
// packets (socket-default fwmark) so they skip its routing table 220. The
// uplinks' mark mask must leave these bits alone.
const CharonMark = 0x42

// DefaultMarkMask is the part of the packet and connection marks the
// uplinks use when Uplinks.MarkMask is zero.
const DefaultMarkMask = 0x0000ff00

// Uplinks is the uplinks' part of the policy (ISP failover and load
// balancing, built by the failover package's owner on this type). Each
// uplink's interface joins the internet zone. For each uplink with a
// Mark, the table gets awall's route-track rules:
//
//   - chain mark_pre (prerouting, mangle): a new connection that comes in
//     through the uplink gets the uplink's connection mark; then every
//     packet of a connection so marked gets that mark into its packet mark
//     (restore), so its replies and later packets take the uplink's table
//     (`ip rule fwmark MARK/MASK lookup TABLE`, installed by the failover
//     side);
//   - chain mark_out (type route, output, mangle): the same restore for
//     the router's own packets that carry no mark of their own (the
//     kernel routes them again after it). charon's IKE and ESP carry 0x42
//     and its rule `not fwmark 0x42 lookup 220` compares the whole mark,
//     so they are left alone and follow their source address's rule;
//   - chain mark_post (postrouting, mangle): a connection without an
//     uplink mark yet gets the mark of the uplink its first packet left
//     through (save), so a LAN flow stays on the uplink it started on.
//
// Every mark operation touches only the bits of MarkMask ("set the bits
// of mask to value", `x & ^mask | value`), so charon's 0x42 on its own
// IKE and ESP packets survives (the mask may not overlap CharonMark).
//
// For each uplink with Masquerade, chain nat_post (postrouting, srcnat)
// masquerades what leaves through it from the LAN zone only: never the
// router's own packets (IKE, ESP, NHRP, probes keep their source address
// and ports) and never what comes out of the tunnel.
//
// The uplinks' routing tables, rules and conntrack flushes belong to the
// failover side (through host/); the firewall only holds these rules.
type Uplinks struct {
	// MarkMask is the mark bits the uplinks own; zero means
	// DefaultMarkMask.
	MarkMask uint32
	List     []Uplink
}

// Uplink is one ISP uplink as the firewall sees it.
type Uplink struct {
	// Name labels the uplink (rule names and comments: [a-z0-9_-]).
	Name string
	// Interface is the uplink's interface.
	Interface string
	// Mark is the uplink's mark value inside MarkMask; zero: no marking.
	Mark uint32
	// Masquerade masquerades LAN sources leaving through the uplink.
	Masquerade bool
}

// Mask returns the mark mask in force.
func (u Uplinks) Mask() uint32 {
	if u.MarkMask == 0 {
		return DefaultMarkMask
	}
	return u.MarkMask
}

// Validate checks the uplinks: names and interfaces set and unique, marks
// unique, non-zero bits inside the mask, the mask clear of CharonMark.
func (u Uplinks) Validate() error {
	var errs []error
	mask := u.Mask()
	if mask&CharonMark != 0 {
		errs = append(errs, fmt.Errorf("uplinks: mark mask %#x overlaps charon's mark %#x", mask, CharonMark))
	}
	names, ifs, marks := map[string]bool{}, map[string]bool{}, map[uint32]string{}
	for i, up := range u.List {
		if !validLabel(up.Name) {
			errs = append(errs, fmt.Errorf("uplinks[%d]: name %q: use 1-24 of [a-z0-9_-]", i, up.Name))
		}
		if names[up.Name] {
			errs = append(errs, fmt.Errorf("uplinks[%d]: name %q twice", i, up.Name))
		}
		names[up.Name] = true
		if !validIfname(up.Interface) || up.Interface[len(up.Interface)-1] == '*' {
			errs = append(errs, fmt.Errorf("uplink %s: interface %q", up.Name, up.Interface))
		}
		if ifs[up.Interface] {
			errs = append(errs, fmt.Errorf("uplink %s: interface %s is another uplink's", up.Name, up.Interface))
		}
		ifs[up.Interface] = true
		if up.Mark == 0 {
			continue
		}
		if up.Mark&^mask != 0 {
			errs = append(errs, fmt.Errorf("uplink %s: mark %#x has bits outside the mask %#x", up.Name, up.Mark, mask))
		}
		if other, dup := marks[up.Mark]; dup {
			errs = append(errs, fmt.Errorf("uplink %s: mark %#x is also uplink %s's", up.Name, up.Mark, other))
		}
		marks[up.Mark] = up.Name
	}
	return errors.Join(errs...)
}

// Facts are what the policy needs of the running node besides the
// firewall section: the tunnel, how IPsec protects it, charon's TUN, the
// management ports, the uplinks.
type Facts struct {
	// Tunnel is the tunnel interface; TunnelMTU its MTU (the MSS of TCP
	// coming out of the tunnel is clamped to it less 40, or 60 for IPv6).
	Tunnel    string
	TunnelMTU int
	// Hub forwards tunnel to tunnel (spoke to spoke through the hub).
	Hub bool
	// IPsec and IPsecTUN: see IPsecMode. In userspace mode an empty
	// IPsecTUN (charon's TUN not found yet) accepts no GRE at all.
	IPsec    IPsecMode
	IPsecTUN string
	// ManagementPorts are the TCP ports of the control API and metrics
	// when they listen on TCP: never accepted from the internet zone.
	ManagementPorts []uint16
	// Uplinks are the ISP uplinks (marks and NAT).
	Uplinks Uplinks
}

// Policy is everything the table is built from: the firewall section and
// the facts of the running node.
type Policy struct {
	Config
	Facts
}

// internet returns the internet zone's interfaces: the configured ones
// and the uplinks', without duplicates, in order.
func (p *Policy) internet() []string {
	out := slices.Clone(p.Internet)
	for _, u := range p.Uplinks.List {
		if !slices.Contains(out, u.Interface) {
			out = append(out, u.Interface)
		}
	}
	return out
}

// Validate checks the policy before anything is built from it.
func (p *Policy) Validate() error {
	var errs []error
	if !validIfname(p.Tunnel) {
		errs = append(errs, fmt.Errorf("firewall: tunnel interface %q", p.Tunnel))
	}
	if p.TunnelMTU < 576 || p.TunnelMTU > 65535 {
		errs = append(errs, fmt.Errorf("firewall: tunnel MTU %d", p.TunnelMTU))
	}
	switch p.IPsec {
	case IPsecOff, IPsecKernel, IPsecUserspace:
	default:
		errs = append(errs, fmt.Errorf("firewall: IPsec mode %q", p.IPsec))
	}
	if p.IPsecTUN != "" && !validIfname(p.IPsecTUN) {
		errs = append(errs, fmt.Errorf("firewall: charon's TUN %q", p.IPsecTUN))
	}
	internet := p.internet()
	switch {
	case p.Baseline && (len(p.LAN) > 0 || len(p.Rules) > 0 || len(p.Internet) > 0):
		errs = append(errs, errors.New("firewall: the baseline policy has no zones or rules of its own"))
	case len(internet) == 0 && !p.Baseline:
		errs = append(errs, errors.New("firewall: the internet zone has no interface (list the uplinks' interfaces)"))
	}
	seen := map[string]Zone{p.Tunnel: ZoneTunnel}
	for _, z := range []struct {
		zone Zone
		ifs  []string
	}{{ZoneInternet, internet}, {ZoneLAN, p.LAN}} {
		for _, n := range z.ifs {
			if !validIfname(n) || strings.HasSuffix(n, "*") {
				errs = append(errs, fmt.Errorf("firewall: %s zone: interface %q (names, no wildcards)", z.zone, n))
				continue
			}
			if other, dup := seen[n]; dup {
				errs = append(errs, fmt.Errorf("firewall: %s zone: interface %s is also in the %s zone", z.zone, n, other))
			}
			seen[n] = z.zone
		}
	}
	if err := p.Uplinks.Validate(); err != nil {
		errs = append(errs, err)
	}
	for i, r := range p.Rules {
		if err := r.validate(); err != nil {
			w := r.Where
			if w == "" {
				w = fmt.Sprintf("rule %d", i+1)
			}
			errs = append(errs, fmt.Errorf("firewall: %s: %w", w, err))
		}
	}
	return errors.Join(errs...)
}

func (r UserRule) validate() error {
	if !slices.Contains(Zones, r.From) || !slices.Contains(Zones, r.To) {
		return fmt.Errorf("zones %q → %q: want %v", r.From, r.To, Zones)
	}
	if r.From == ZoneLocal {
		return errors.New("from local: the router's own traffic is not filtered (only GRE without IPsec is)")
	}
	switch r.Action {
	case VerdictAccept, VerdictDrop, VerdictReject:
	default:
		return fmt.Errorf("action %q: want accept, drop or reject", r.Action)
	}
	if len(r.Ports) > 0 && r.Protocol != ProtoTCP && r.Protocol != ProtoUDP {
		return errors.New("ports need protocol tcp or udp")
	}
	if slices.Contains(r.Ports, 0) {
		return errors.New("port 0")
	}
	if r.Source.IsValid() && r.Destination.IsValid() && r.Source.Addr().Is4() != r.Destination.Addr().Is4() {
		return errors.New("source and destination of different families")
	}
	return nil
}

// validIfname reports whether s is an interface name (a trailing '*'
// matches a prefix).
func validIfname(s string) bool {
	if s == "" || len(s) > 15 || s == "*" {
		return false
	}
	for i, c := range s {
		if c == '/' || c == ' ' || c == '\t' || c == '"' || c < 0x20 || c > 0x7e || c == '*' && i != len(s)-1 {
			return false
		}
	}
	return true
}

func validLabel(s string) bool {
	if s == "" || len(s) > 24 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
