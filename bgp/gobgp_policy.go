package bgp

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/server"
)

// Names of the GoBGP policy objects this package owns.
const (
	policyImport   = "dmvpn-import"
	policyExport   = "dmvpn-export"
	setRefused     = "dmvpn-refused"
	setHubs        = "dmvpn-hubs"
	setSummary     = "dmvpn-summary"
	setSummarised  = "dmvpn-summarised"
	stmtLocal      = "dmvpn-local"
	stmtRefuse     = "dmvpn-refuse"
	stmtFromHubs   = "dmvpn-from-hubs"
	stmtOwn        = "dmvpn-own"
	stmtNoSumHubs  = "dmvpn-no-summary-to-hubs"
	stmtSummarised = "dmvpn-summarised"
	stmtToHubs     = "dmvpn-to-hubs"
	stmtToSpokes   = "dmvpn-to-spokes"
)

// placeholder keeps a neighbour set from being empty: GoBGP matches every
// neighbour against an empty set.
const placeholder = "0.0.0.0/32"

func prefixEntry(p netip.Prefix, min, max int) *api.Prefix {
	return &api.Prefix{IpPrefix: p.Masked().String(), MaskLengthMin: uint32(min), MaskLengthMax: uint32(max)}
}

// refusedEntries is the prefix set of what no neighbour may announce: the
// default route, anything covering a hub's NBMA address, anything
// overlapping the tunnel network.
func refusedEntries(cfg Config) []*api.Prefix {
	out := []*api.Prefix{prefixEntry(netip.MustParsePrefix("0.0.0.0/0"), 0, 0)}
	covering := func(a netip.Addr, upTo int) {
		for l := 1; l <= upTo; l++ {
			out = append(out, prefixEntry(netip.PrefixFrom(a, l), l, l))
		}
	}
	if t := cfg.Tunnel.Masked(); t.IsValid() {
		covering(t.Addr(), t.Bits()-1)
		out = append(out, prefixEntry(t, t.Bits(), 32))
	}
	for _, a := range cfg.ProtectedNBMA {
		out = append(out, nbmaEntries(a)...)
	}
	return out
}

// nbmaEntries refuses every prefix covering a.
func nbmaEntries(a netip.Addr) []*api.Prefix {
	out := make([]*api.Prefix, 0, 32)
	for l := 1; l <= 32; l++ {
		out = append(out, prefixEntry(netip.PrefixFrom(a, l), l, l))
	}
	return out
}

// Protect adds NBMA addresses to the refused set: in place (an
// AddDefinedSet without Replace appends to the set the refusing
// statement matches), then every neighbour's routes are judged again.
func (g *GoBGP) Protect(ctx context.Context, nbma []netip.Addr) error {
	s, cfg, err := g.server()
	if err != nil {
		return err
	}
	set := &api.DefinedSet{DefinedType: api.DefinedType_DEFINED_TYPE_PREFIX, Name: setRefused}
	var added []netip.Addr
	for _, a := range nbma {
		if a.Is4() && !slices.Contains(cfg.ProtectedNBMA, a) && !slices.Contains(added, a) {
			added = append(added, a)
			set.Prefixes = append(set.Prefixes, nbmaEntries(a)...)
		}
	}
	if len(added) == 0 {
		return nil
	}
	if err := s.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: set}); err != nil {
		return fmt.Errorf("bgp: refusing prefixes covering %v: %w", added, err)
	}
	g.mu.Lock()
	// A new slice: copies of the configuration others hold keep theirs.
	g.cfg.ProtectedNBMA = append(slices.Clone(g.cfg.ProtectedNBMA), added...)
	g.mu.Unlock()
	return s.ResetPeer(ctx, &api.ResetPeerRequest{Address: "all", Soft: true, Direction: api.ResetPeerRequest_DIRECTION_IN})
}

func matchSet(name string, t api.MatchSet_Type) *api.MatchSet {
	return &api.MatchSet{Name: name, Type: t}
}

// setPolicies installs the node's import and export policies: refusals
// and hubs first, each spoke's own statement added with it; phase 3 (the
// summary toward spokes, the specific routes toward hubs) or phase 2 (the
// specific routes toward spokes, next hop unchanged) on hubs; a spoke
// sends only its own routes.
func (g *GoBGP) setPolicies(ctx context.Context, cfg Config) error {
	s, _, err := g.server()
	if err != nil {
		return err
	}
	sets := []*api.DefinedSet{
		{DefinedType: api.DefinedType_DEFINED_TYPE_PREFIX, Name: setRefused, Prefixes: refusedEntries(cfg)},
		{DefinedType: api.DefinedType_DEFINED_TYPE_NEIGHBOR, Name: setHubs, List: []string{placeholder}},
	}
	for _, h := range cfg.Hubs {
		sets[1].List = append(sets[1].List, netip.PrefixFrom(h, 32).String())
	}
	if len(cfg.Summary) > 0 {
		sum := &api.DefinedSet{DefinedType: api.DefinedType_DEFINED_TYPE_PREFIX, Name: setSummary}
		under := &api.DefinedSet{DefinedType: api.DefinedType_DEFINED_TYPE_PREFIX, Name: setSummarised}
		for _, p := range cfg.Summary {
			sum.Prefixes = append(sum.Prefixes, prefixEntry(p, p.Bits(), p.Bits()))
			under.Prefixes = append(under.Prefixes, prefixEntry(p, p.Bits()+1, 32))
		}
		sets = append(sets, sum, under)
	}
	for _, d := range sets {
		if err := s.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: d}); err != nil {
			return fmt.Errorf("bgp: defining %s: %w", d.Name, err)
		}
	}
	accept := &api.Actions{RouteAction: api.RouteAction_ROUTE_ACTION_ACCEPT}
	reject := &api.Actions{RouteAction: api.RouteAction_ROUTE_ACTION_REJECT}
	imp := &api.Policy{Name: policyImport, Statements: []*api.Statement{
		// GoBGP runs this node's own routes through the import policy too.
		{Name: stmtLocal, Conditions: &api.Conditions{RouteType: api.Conditions_ROUTE_TYPE_LOCAL}, Actions: accept},
		{Name: stmtRefuse, Conditions: &api.Conditions{PrefixSet: matchSet(setRefused, api.MatchSet_TYPE_ANY)}, Actions: reject},
		{Name: stmtFromHubs, Conditions: &api.Conditions{NeighborSet: matchSet(setHubs, api.MatchSet_TYPE_ANY)}, Actions: accept},
	}}
	exp := &api.Policy{Name: policyExport}
	expDefault := api.RouteAction_ROUTE_ACTION_ACCEPT
	toHubs := &api.Conditions{NeighborSet: matchSet(setHubs, api.MatchSet_TYPE_ANY)}
	toSpokes := func() *api.MatchSet { return matchSet(setHubs, api.MatchSet_TYPE_INVERT) }
	if cfg.Role == RoleSpoke {
		exp.Statements = append(exp.Statements, &api.Statement{Name: stmtOwn,
			Conditions: &api.Conditions{RouteType: api.Conditions_ROUTE_TYPE_LOCAL}, Actions: accept})
		expDefault = api.RouteAction_ROUTE_ACTION_REJECT
	} else {
		if len(cfg.Summary) > 0 {
			exp.Statements = append(exp.Statements, &api.Statement{Name: stmtNoSumHubs,
				Conditions: &api.Conditions{NeighborSet: matchSet(setHubs, api.MatchSet_TYPE_ANY), PrefixSet: matchSet(setSummary, api.MatchSet_TYPE_ANY)},
				Actions:    reject})
			if !cfg.Phase2 {
				exp.Statements = append(exp.Statements, &api.Statement{Name: stmtSummarised,
					Conditions: &api.Conditions{NeighborSet: toSpokes(), PrefixSet: matchSet(setSummarised, api.MatchSet_TYPE_ANY)},
					Actions:    reject})
			}
		}
		exp.Statements = append(exp.Statements, &api.Statement{Name: stmtToHubs, Conditions: toHubs,
			Actions: &api.Actions{RouteAction: api.RouteAction_ROUTE_ACTION_ACCEPT, Nexthop: &api.NexthopAction{Self: true}}})
		if cfg.Phase2 {
			exp.Statements = append(exp.Statements, &api.Statement{Name: stmtToSpokes,
				Conditions: &api.Conditions{NeighborSet: toSpokes()},
				Actions:    &api.Actions{RouteAction: api.RouteAction_ROUTE_ACTION_ACCEPT, Nexthop: &api.NexthopAction{Unchanged: true}}})
		}
	}
	for _, p := range []*api.Policy{imp, exp} {
		if err := s.AddPolicy(ctx, &api.AddPolicyRequest{Policy: p}); err != nil {
			return fmt.Errorf("bgp: policy %s: %w", p.Name, err)
		}
	}
	assign := []*api.PolicyAssignment{
		{Name: "global", Direction: api.PolicyDirection_POLICY_DIRECTION_IMPORT,
			Policies: []*api.Policy{{Name: policyImport}}, DefaultAction: api.RouteAction_ROUTE_ACTION_REJECT},
		{Name: "global", Direction: api.PolicyDirection_POLICY_DIRECTION_EXPORT,
			Policies: []*api.Policy{{Name: policyExport}}, DefaultAction: expDefault},
	}
	for _, a := range assign {
		if err := s.SetPolicyAssignment(ctx, &api.SetPolicyAssignmentRequest{Assignment: a}); err != nil {
			return fmt.Errorf("bgp: assigning %s: %w", a.Direction, err)
		}
	}
	return nil
}

func spokeNames(a netip.Addr) (nbrSet, netSet, stmt string) {
	return "dmvpn-nbr-" + a.String(), "dmvpn-net-" + a.String(), "dmvpn-spoke-" + a.String()
}

// spokeASPathSet is the name of the AS paths a spoke may send.
func spokeASPathSet(a netip.Addr) string { return "dmvpn-aspath-" + a.String() }

// spokeASPaths are the AS paths a spoke's routes may carry, as GoBGP's
// AS-path set patterns: a spoke is a stub, so over eBGP its own AS only
// (prepended as often as it likes), over iBGP (ibgp mode) none at all. A
// path through another AS would have the spoke claim to be a transit.
func spokeASPaths(cfg Config, n Neighbor) []string {
	if n.AS == cfg.AS {
		return []string{"^$"}
	}
	return []string{fmt.Sprintf("^%d(_%d)*$", n.AS, n.AS)}
}

// spokePolicy records which of a spoke's policy objects exist in GoBGP
// (its neighbour set, its networks' prefix set, its statement): the
// speaker made them all, so it knows without asking GoBGP — a list
// request per neighbour waits for GoBGP's lock behind every session's
// UPDATE processing, which made a thousand registrations take minutes.
type spokePolicy struct{ nbr, nets, aspath, stmt bool }

// setNeighborPolicy gives a neighbour its place in the policies before its
// session starts (had: the neighbour exists, only its networks change):
// a hub or server joins the hubs' set; a spoke gets a statement that
// accepts its networks (up to MaxLen bits) less other spokes' more
// specific networks inside them (Neighbor.Excluded), and nothing else.
func (g *GoBGP) setNeighborPolicy(ctx context.Context, s *server.BgpServer, cfg Config, n Neighbor, had bool) error {
	host := netip.PrefixFrom(n.Address, 32).String()
	if n.Kind != KindSpoke {
		return s.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: &api.DefinedSet{
			DefinedType: api.DefinedType_DEFINED_TYPE_NEIGHBOR, Name: setHubs, List: []string{host}}})
	}
	nbrSet, netSet, _ := spokeNames(n.Address)
	nets := &api.DefinedSet{DefinedType: api.DefinedType_DEFINED_TYPE_PREFIX, Name: netSet}
	for _, r := range acceptRanges(n) {
		nets.Prefixes = append(nets.Prefixes, prefixEntry(r.Prefix, r.Min, r.Max))
	}
	g.mu.Lock()
	cur := g.spokePol[n.Address]
	g.mu.Unlock()
	if cur != (spokePolicy{}) {
		// The networks changed (had), or a failed attempt left something:
		// the statement goes with its sets and all come back new. Not
		// AddDefinedSet with Replace: GoBGP v4.9.0 then stores a new set
		// object (RoutingPolicy.AddDefinedSet,
		// internal/pkg/table/policy.go:4387) while the statement keeps
		// matching the old one it resolved when it was added, so a renewed
		// certificate's NET= never reached the filter: a network taken
		// away stayed accepted, one added was never accepted.
		err := g.deleteNeighborPolicy(ctx, s, cfg, n)
		if had && err != nil {
			return fmt.Errorf("bgp: replacing the filter of %s: %w", n.Address, err)
		}
	}
	if len(nets.Prefixes) == 0 {
		return nil
	}
	if err := s.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: &api.DefinedSet{
		DefinedType: api.DefinedType_DEFINED_TYPE_NEIGHBOR, Name: nbrSet, List: []string{host}}}); err != nil {
		return fmt.Errorf("bgp: neighbour set of %s: %w", n.Address, err)
	}
	g.markSpokePolicy(n.Address, func(p *spokePolicy) { p.nbr = true })
	if err := s.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: nets}); err != nil {
		return fmt.Errorf("bgp: networks of %s: %w", n.Address, err)
	}
	g.markSpokePolicy(n.Address, func(p *spokePolicy) { p.nets = true })
	if err := s.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: &api.DefinedSet{
		DefinedType: api.DefinedType_DEFINED_TYPE_AS_PATH, Name: spokeASPathSet(n.Address), List: spokeASPaths(cfg, n)}}); err != nil {
		return fmt.Errorf("bgp: AS paths of %s: %w", n.Address, err)
	}
	g.markSpokePolicy(n.Address, func(p *spokePolicy) { p.aspath = true })
	return g.addSpokeStatement(ctx, s, n)
}

// markSpokePolicy changes what is recorded of a spoke's policy objects.
func (g *GoBGP) markSpokePolicy(a netip.Addr, f func(*spokePolicy)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	p := g.spokePol[a]
	f(&p)
	if p == (spokePolicy{}) {
		delete(g.spokePol, a)
	} else {
		g.spokePol[a] = p
	}
}

// spokeImportActions accept a spoke's route as the hub passes it on: the
// next hop is the spoke itself, whatever NEXT_HOP it wrote (another
// spoke's tunnel address would have the hub, and in phase 2 every spoke,
// send the spoke's LAN traffic there); its communities (standard,
// extended, large) are dropped, so a spoke cannot reach into the policy of
// the hubs or of other spokes (BLACKHOLE, NO_EXPORT, graceful shutdown,
// another site's own values); MED is 0 and LOCAL_PREF 100, so an iBGP
// spoke cannot rank its paths above the hubs' choice. GoBGP has no action
// that strips unknown transitive attributes or AGGREGATOR: those pass on,
// as they do through FRR 8.4 and Cisco by default.
func spokeImportActions() *api.Actions {
	clear := func() *api.CommunityAction { return &api.CommunityAction{Type: api.CommunityAction_TYPE_REPLACE} }
	return &api.Actions{RouteAction: api.RouteAction_ROUTE_ACTION_ACCEPT, Nexthop: &api.NexthopAction{PeerAddress: true},
		Community: clear(), ExtCommunity: clear(), LargeCommunity: clear(),
		Med: &api.MedAction{Type: api.MedAction_TYPE_REPLACE, Value: 0}, LocalPref: &api.LocalPrefAction{Value: 100}}
}

// addSpokeStatement adds a spoke's accepting statement to the import
// policy: its networks with its own AS path, through the spoke.
func (g *GoBGP) addSpokeStatement(ctx context.Context, s *server.BgpServer, n Neighbor) error {
	nbrSet, netSet, stmt := spokeNames(n.Address)
	st := &api.Statement{Name: stmt,
		Conditions: &api.Conditions{NeighborSet: matchSet(nbrSet, api.MatchSet_TYPE_ANY), PrefixSet: matchSet(netSet, api.MatchSet_TYPE_ANY),
			AsPathSet: matchSet(spokeASPathSet(n.Address), api.MatchSet_TYPE_ANY)},
		Actions: spokeImportActions()}
	if err := s.AddPolicy(ctx, &api.AddPolicyRequest{Policy: &api.Policy{Name: policyImport, Statements: []*api.Statement{st}}}); err != nil {
		return fmt.Errorf("bgp: filter of %s: %w", n.Address, err)
	}
	g.markSpokePolicy(n.Address, func(p *spokePolicy) { p.stmt = true })
	return nil
}

// deleteNeighborPolicy takes a neighbour out of the policies.
func (g *GoBGP) deleteNeighborPolicy(ctx context.Context, s *server.BgpServer, cfg Config, n Neighbor) error {
	host := netip.PrefixFrom(n.Address, 32).String()
	if n.Kind != KindSpoke {
		for _, h := range cfg.Hubs {
			if h == n.Address {
				return nil // configured hubs stay in the set
			}
		}
		return s.DeleteDefinedSet(ctx, &api.DeleteDefinedSetRequest{DefinedSet: &api.DefinedSet{
			DefinedType: api.DefinedType_DEFINED_TYPE_NEIGHBOR, Name: setHubs, List: []string{host}}})
	}
	nbrSet, netSet, stmt := spokeNames(n.Address)
	g.mu.Lock()
	cur := g.spokePol[n.Address]
	g.mu.Unlock()
	var errs []error
	if cur.stmt {
		if err := s.DeletePolicy(ctx, &api.DeletePolicyRequest{
			Policy: &api.Policy{Name: policyImport, Statements: []*api.Statement{{Name: stmt}}}}); err != nil {
			errs = append(errs, err)
		} else {
			g.markSpokePolicy(n.Address, func(p *spokePolicy) { p.stmt = false })
		}
	}
	for _, d := range []struct {
		set   *api.DefinedSet
		there bool
		clear func(*spokePolicy)
	}{
		{&api.DefinedSet{DefinedType: api.DefinedType_DEFINED_TYPE_NEIGHBOR, Name: nbrSet}, cur.nbr, func(p *spokePolicy) { p.nbr = false }},
		{&api.DefinedSet{DefinedType: api.DefinedType_DEFINED_TYPE_PREFIX, Name: netSet}, cur.nets, func(p *spokePolicy) { p.nets = false }},
		{&api.DefinedSet{DefinedType: api.DefinedType_DEFINED_TYPE_AS_PATH, Name: spokeASPathSet(n.Address)}, cur.aspath, func(p *spokePolicy) { p.aspath = false }},
	} {
		if !d.there {
			continue
		}
		if err := s.DeleteDefinedSet(ctx, &api.DeleteDefinedSetRequest{DefinedSet: d.set, All: true}); err != nil {
			errs = append(errs, err)
			continue
		}
		g.markSpokePolicy(n.Address, d.clear)
	}
	return errors.Join(errs...)
}
