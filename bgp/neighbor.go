package bgp

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
)

// Kind is why a neighbour exists.
type Kind uint8

// Kinds of neighbour.
const (
	// KindSpoke is a spoke registered with this hub.
	KindSpoke Kind = iota + 1
	// KindServer is a next hop server this spoke is registered with.
	KindServer
	// KindHub is another hub (configured).
	KindHub
)

func (k Kind) String() string {
	switch k {
	case KindSpoke:
		return "spoke"
	case KindServer:
		return "nhs"
	case KindHub:
		return "hub"
	}
	return "unknown"
}

// MarshalText names the kind in JSON.
func (k Kind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText reads the name MarshalText writes.
func (k *Kind) UnmarshalText(b []byte) error {
	for _, c := range []Kind{KindSpoke, KindServer, KindHub} {
		if c.String() == string(b) {
			*k = c
			return nil
		}
	}
	if len(b) == 0 || string(b) == "unknown" {
		*k = 0
		return nil
	}
	return fmt.Errorf("bgp: unknown neighbour kind %q", b)
}

// Neighbor is a neighbour the speaker should have, with what it may
// announce.
type Neighbor struct {
	// Address is the neighbour's tunnel address.
	Address netip.Addr
	AS      uint32
	Kind    Kind
	// Networks are the networks a spoke may announce inside (up to
	// MaxLen bits); hubs and servers have none: everything but what is
	// refused from every neighbour is accepted from them.
	Networks []netip.Prefix
	MaxLen   int
	// Excluded are other spokes' networks strictly inside one of
	// Networks (the controller's, sorted): a spoke may announce nothing
	// inside or equal to one of them under that network, since those
	// addresses belong to the more specific network's spoke; prefixes
	// covering them stay allowed. A spoke with the same network as
	// another may announce inside it as the other does.
	Excluded []netip.Prefix
	// Identity is the certificate subject the spoke proved ("" without
	// IPsec), Source where AS and networks came from ("certificate" or
	// "config").
	Identity string
	Source   string
	// NBMA is the neighbour's NBMA address (for the shell).
	NBMA netip.Addr
	// RRClient makes the neighbour a route-reflector client (iBGP mode).
	RRClient bool
	// Passive makes this side wait for the neighbour's connection
	// instead of dialling too: a hub waits for its spokes (they dial
	// their servers, as they dial an FRR or Cisco hub's listen range),
	// and of two hubs the one with the higher tunnel address waits.
	// Exactly one side of a session between two of our nodes dials, so
	// their connections never collide (GoBGP.peer says why that
	// matters).
	Passive bool
}

// same reports whether two neighbours need no change to the session or
// its filter (NBMA and identity may differ).
func (n Neighbor) same(o Neighbor) bool {
	return n.Address == o.Address && n.AS == o.AS && n.Kind == o.Kind && n.MaxLen == o.MaxLen &&
		n.RRClient == o.RRClient && n.Passive == o.Passive && slices.Equal(n.Networks, o.Networks) &&
		slices.Equal(n.Excluded, o.Excluded)
}

// sessionSame reports whether a change from o to n keeps the session (only
// the filter differs).
func (n Neighbor) sessionSame(o Neighbor) bool {
	return n.Address == o.Address && n.AS == o.AS && n.Kind == o.Kind && n.RRClient == o.RRClient && n.Passive == o.Passive
}

// spokeNeighbor is the neighbour a registered spoke becomes: AS and
// networks from its certificate's fields (attrs: "AS", "NET"), or from the
// configuration without IPsec — both through the same checks. A
// certificate with no or several OU=AS=, or fields that do not parse, is
// refused.
func (c Config) spokeNeighbor(addr, nbma netip.Addr, identity string, attrs map[string][]string) (Neighbor, error) {
	n := Neighbor{Address: addr, Kind: KindSpoke, MaxLen: c.MaxPrefixLen, Identity: identity, NBMA: nbma, Passive: true}
	if !addr.Is4() {
		return n, fmt.Errorf("spoke address %v is not IPv4", addr)
	}
	var ases, nets []string
	if c.UseCertificates {
		n.Source = "certificate"
		ases, nets = attrs["AS"], attrs["NET"]
		switch len(ases) {
		case 0:
			return n, fmt.Errorf("the certificate of %s has no OU=AS=", addr)
		case 1:
		default:
			return n, fmt.Errorf("the certificate of %s has %d OU=AS= fields", addr, len(ases))
		}
	} else {
		n.Source = "config"
		auth, ok := c.Spokes[addr]
		if !ok && c.DefaultSpoke != nil {
			auth, ok = *c.DefaultSpoke, true
		}
		if !ok {
			return n, fmt.Errorf("no AS configured for spoke %s (bgp.spokes or bgp.default_spoke)", addr)
		}
		ases = []string{strconv.FormatUint(uint64(auth.AS), 10)}
		for _, p := range auth.Networks {
			nets = append(nets, p.String())
		}
	}
	as, err := strconv.ParseUint(ases[0], 10, 32)
	if err != nil || as == 0 {
		return n, fmt.Errorf("AS %q of %s is not an AS number", ases[0], addr)
	}
	n.AS = uint32(as)
	for _, s := range nets {
		p, err := netip.ParsePrefix(s)
		if err != nil || !p.Addr().Is4() || p.Masked() != p {
			return n, fmt.Errorf("network %q of %s is not an IPv4 network", s, addr)
		}
		if !slices.Contains(n.Networks, p) {
			n.Networks = append(n.Networks, p)
		}
	}
	slices.SortFunc(n.Networks, comparePrefix)
	if c.Mode == ModeIBGP {
		if n.AS != c.HubAS {
			return n, fmt.Errorf("spoke %s is in AS %d, not the hubs' AS %d (ibgp mode)", addr, n.AS, c.HubAS)
		}
		n.RRClient = true
	}
	return n, nil
}

// hubNeighbor is another hub, or a server of this spoke.
func (c Config) hubNeighbor(addr, nbma netip.Addr, kind Kind) Neighbor {
	return Neighbor{Address: addr, AS: c.HubAS, Kind: kind, NBMA: nbma, Source: "config",
		Passive: kind == KindHub && c.Tunnel.Addr().Compare(addr) > 0}
}

// Refusal says why a prefix received from a neighbour is refused, or "" if
// it is accepted: refused from everyone whatever the certificate says
// (default route, hub NBMA, tunnel network), and from a spoke anything
// outside its networks, longer than their limit, or inside another
// spoke's more specific network (Neighbor.Excluded).
func (c Config) Refusal(n Neighbor, p netip.Prefix) string {
	if why := c.bogon(p); why != "" {
		return why
	}
	if n.Kind != KindSpoke {
		return ""
	}
	return n.networkRefusal(p)
}

// networkRefusal judges a spoke's prefix by its networks: accepted if one
// of them allows it (the GoBGP filter is their union, acceptRanges), else
// refused for the reason the most specific network containing it gives.
func (n Neighbor) networkRefusal(p netip.Prefix) string {
	why, whyBits := "", -1
	for _, allowed := range n.Networks {
		if !allowed.Contains(p.Addr()) || p.Bits() < allowed.Bits() {
			continue
		}
		reason := n.excludedRefusal(allowed, p)
		if limit := max(n.MaxLen, allowed.Bits()); p.Bits() > limit {
			reason = fmt.Sprintf("longer than /%d inside %s", limit, allowed)
		}
		if reason == "" {
			return ""
		}
		if allowed.Bits() > whyBits {
			why, whyBits = reason, allowed.Bits()
		}
	}
	if why != "" {
		return why
	}
	if len(n.Networks) == 0 {
		return "the neighbour may announce no network"
	}
	return fmt.Sprintf("outside the networks %v the neighbour may announce", n.Networks)
}

// ASPathRefusal says why a spoke's route is refused for its AS path ("" if
// it is not): a spoke is a stub, so over eBGP its routes carry its own AS
// only (prepended as often as it likes), over iBGP no AS at all; a path
// through another AS, or with an AS_SET, would have it claim to be a
// transit. The import statement's AS-path set (spokeASPaths) is the same
// rule.
func (c Config) ASPathRefusal(n Neighbor, r Route) string {
	if n.Kind != KindSpoke {
		return ""
	}
	switch {
	case n.AS == c.AS && len(r.ASPath) > 0:
		return fmt.Sprintf("AS path %v from an iBGP spoke, which must send an empty one", r.ASPath)
	case n.AS == c.AS:
		return ""
	case r.ASSet:
		return fmt.Sprintf("AS path %v has an AS_SET or confederation segment", r.ASPath)
	case len(r.ASPath) == 0:
		return "empty AS path from an eBGP spoke"
	}
	for _, as := range r.ASPath {
		if as != n.AS {
			return fmt.Sprintf("AS path %v goes through AS %d: a spoke announces its own networks only (AS %d)", r.ASPath, as, n.AS)
		}
	}
	return ""
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}
