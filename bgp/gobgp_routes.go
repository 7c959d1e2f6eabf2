package bgp

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
)

// Routes lists a table: the RIB with best and multipath paths marked, or
// what a neighbour sent (refused ones marked, with why) or is sent.
func (g *GoBGP) Routes(ctx context.Context, q RouteQuery) ([]Route, error) {
	s, cfg, err := g.server()
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r := apiutil.ListPathRequest{Family: bgp.RF_IPv4_UC, TableType: api.TableType_TABLE_TYPE_GLOBAL}
	switch q.Table {
	case TableReceived:
		// Not EnableFiltered: GoBGP then re-times the neighbour's paths
		// outside its goroutine (a data race); the refusals are judged
		// here by the rules the import policy was built from.
		r.TableType, r.Name = api.TableType_TABLE_TYPE_ADJ_IN, q.Neighbor.String()
	case TableAdvertised:
		r.TableType, r.Name = api.TableType_TABLE_TYPE_ADJ_OUT, q.Neighbor.String()
	}
	switch {
	case q.Prefix.IsValid():
		r.Prefixes = []*apiutil.LookupPrefix{{Prefix: q.Prefix.String(), LookupOption: apiutil.LOOKUP_EXACT}}
	case q.Address.IsValid():
		// A bare address with the exact option is GoBGP's longest match
		// (Table.Select, internal/pkg/table/table.go:853 in v4.9.0).
		r.Prefixes = []*apiutil.LookupPrefix{{Prefix: q.Address.String(), LookupOption: apiutil.LOOKUP_EXACT}}
	}
	g.mu.Lock()
	nbr := g.nbrs[q.Neighbor]
	g.mu.Unlock()
	var out []Route
	err = s.ListPath(r, func(_ bgp.NLRI, paths []*apiutil.Path) {
		for i, p := range paths {
			rt, ok := toRoute(p)
			if !ok {
				continue
			}
			switch q.Table {
			case TableBest:
				rt.Best = i == 0 && p.Best
				rt.Multipath = i > 0 && p.Best
			case TableReceived:
				rt.Why = cfg.Refusal(nbr, rt.Prefix)
				if rt.Why == "" {
					rt.Why = cfg.ASPathRefusal(nbr, rt)
				}
				rt.Refused = rt.Why != ""
			}
			out = append(out, rt)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("bgp: listing routes: %w", err)
	}
	return out, nil
}

// toRoute converts a GoBGP path.
func toRoute(p *apiutil.Path) (Route, bool) {
	nlri, ok := p.Nlri.(*bgp.IPAddrPrefix)
	if !ok || p.Withdrawal {
		return Route{}, false
	}
	r := Route{Prefix: nlri.Prefix, Peer: p.PeerAddress, PeerAS: p.PeerASN, Stale: p.Stale, Origin: "?", ASPath: []uint32{}}
	if p.Age > 0 {
		r.Age = time.Unix(p.Age, 0)
	}
	for _, a := range p.Attrs {
		switch a := a.(type) {
		case *bgp.PathAttributeNextHop:
			r.NextHop = a.Value
		case *bgp.PathAttributeMpReachNLRI:
			if !r.NextHop.IsValid() {
				r.NextHop = a.Nexthop
			}
		case *bgp.PathAttributeOrigin:
			r.Origin = [...]string{"i", "e", "?"}[min(int(a.Value), 2)]
		case *bgp.PathAttributeAsPath:
			for _, seg := range a.Value {
				r.ASPath = append(r.ASPath, seg.GetAS()...)
				r.ASSet = r.ASSet || seg.GetType() != bgp.BGP_ASPATH_ATTR_TYPE_SEQ
			}
		case *bgp.PathAttributeMultiExitDisc:
			r.MED = a.Value
		case *bgp.PathAttributeLocalPref:
			r.LocalPref = a.Value
		}
	}
	return r, true
}

// kernelRoutes turns the RIB into the routes the kernel should have: for
// every prefix learned from a neighbour, its best path and the paths of
// equal rank (ECMP), each through its next hop; our own routes stay out.
func kernelRoutes(rib []Route) []KernelRoute {
	idx := map[netip.Prefix]int{}
	var out []KernelRoute
	for _, r := range rib {
		if !(r.Best || r.Multipath) || r.Local() || !r.NextHop.IsValid() {
			continue
		}
		i, ok := idx[r.Prefix]
		if !ok {
			i = len(out)
			idx[r.Prefix] = i
			out = append(out, KernelRoute{Dst: r.Prefix})
		}
		if !containsAddr(out[i].NextHops, r.NextHop) {
			out[i].NextHops = append(out[i].NextHops, r.NextHop)
		}
	}
	return out
}

func containsAddr(l []netip.Addr, a netip.Addr) bool {
	for _, x := range l {
		if x == a {
			return true
		}
	}
	return false
}
