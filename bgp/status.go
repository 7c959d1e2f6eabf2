package bgp

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// Summary is what `show ip bgp summary` prints.
type Summary struct {
	RouterID netip.Addr `json:"router_id"`
	AS       uint32     `json:"as"`
	Role     string     `json:"role"`
	Mode     string     `json:"mode"`
	// Neighbors are the sessions, sorted by address.
	Neighbors []NeighborStatus `json:"neighbors"`
	// Refused are registered spokes that did not become neighbours.
	Refused []RefusedNeighbor `json:"refused_neighbors,omitempty"`
	// KernelRoutes is how many routes BGP has in the kernel.
	KernelRoutes int `json:"kernel_routes"`
}

// NeighborStatus is one neighbour: its session and why it exists.
type NeighborStatus struct {
	SessionState
	Kind     Kind           `json:"kind"`
	NBMA     netip.Addr     `json:"nbma,omitzero"`
	Identity string         `json:"identity,omitempty"`
	Source   string         `json:"source,omitempty"`
	Networks []netip.Prefix `json:"networks,omitempty"`
	// Excluded are other spokes' more specific networks inside Networks,
	// which this one may not announce into.
	Excluded []netip.Prefix `json:"excluded,omitempty"`
	MaxLen   int            `json:"max_length,omitempty"`
	// Refused is how many prefixes it sends that the filter refuses now,
	// RefusedTotal how many were refused since it became a neighbour.
	Refused      int    `json:"prefixes_refused"`
	RefusedTotal uint64 `json:"prefixes_refused_total"`
}

// RefusedNeighbor is a registered spoke that is not a neighbour.
type RefusedNeighbor struct {
	Address  netip.Addr `json:"address"`
	Identity string     `json:"identity,omitempty"`
	Reason   string     `json:"reason"`
	Since    time.Time  `json:"since"`
}

// ErrNoNeighbor is returned for an address that is not a neighbour.
var ErrNoNeighbor = errors.New("no such BGP neighbour")

// Summary returns the neighbours and their sessions.
func (c *Controller) Summary(ctx context.Context) (Summary, error) {
	sessions, err := c.deps.Speaker.Neighbors(ctx)
	if err != nil {
		return Summary{}, err
	}
	s := Summary{RouterID: c.cfg.RouterID, AS: c.cfg.AS, Role: c.cfg.Role.String(), Mode: c.cfg.Mode.String(), Neighbors: []NeighborStatus{}}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, st := range sessions {
		ns := NeighborStatus{SessionState: st}
		if n, ok := c.have[st.Address]; ok {
			ns.Kind, ns.NBMA, ns.Identity, ns.Source = n.Kind, n.NBMA, n.Identity, n.Source
			ns.Networks, ns.Excluded, ns.MaxLen = n.Networks, n.Excluded, n.MaxLen
			if n.Kind != KindSpoke {
				ns.MaxLen = 0
			}
		}
		ns.Refused = len(c.refused[st.Address])
		ns.RefusedTotal = c.stats.PrefixesRefused[st.Address]
		s.Neighbors = append(s.Neighbors, ns)
	}
	slices.SortFunc(s.Neighbors, func(a, b NeighborStatus) int { return a.Address.Compare(b.Address) })
	for a, r := range c.refNbr {
		s.Refused = append(s.Refused, RefusedNeighbor{Address: a, Identity: r.Identity, Reason: r.Reason, Since: r.Time})
	}
	slices.SortFunc(s.Refused, func(a, b RefusedNeighbor) int { return a.Address.Compare(b.Address) })
	s.KernelRoutes = c.stats.FIBRoutes
	return s, nil
}

// Routes returns a table's routes: the RIB, or what a neighbour sent
// (refused ones marked, with why) or is sent.
func (c *Controller) Routes(ctx context.Context, q RouteQuery) ([]Route, error) {
	if q.Table != TableBest {
		c.mu.Lock()
		_, ok := c.have[q.Neighbor]
		c.mu.Unlock()
		if !ok {
			return nil, fmt.Errorf("%w: %s", ErrNoNeighbor, q.Neighbor)
		}
	}
	rs, err := c.deps.Speaker.Routes(ctx, q)
	if rs == nil && err == nil {
		rs = []Route{}
	}
	return rs, err
}

// Clear restarts the session of a neighbour, or of every neighbour when
// addr is invalid; soft asks for the routes again instead. It returns how
// many sessions it cleared.
func (c *Controller) Clear(ctx context.Context, addr netip.Addr, soft bool) (int, error) {
	c.mu.Lock()
	var addrs []netip.Addr
	for a := range c.have {
		if !addr.IsValid() || a == addr {
			addrs = append(addrs, a)
		}
	}
	c.mu.Unlock()
	if addr.IsValid() && len(addrs) == 0 {
		return 0, fmt.Errorf("%w: %s", ErrNoNeighbor, addr)
	}
	var errs []error
	for _, a := range addrs {
		if err := c.deps.Speaker.ResetNeighbor(ctx, a, soft); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", a, err))
		}
	}
	return len(addrs) - len(errs), errors.Join(errs...)
}
