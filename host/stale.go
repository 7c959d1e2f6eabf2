package host

import (
	"context"
	"errors"
	"fmt"
	"slices"
)

// What an earlier run of a client left at identifiers it no longer owns.
//
// With a state file, the Manager records for each client the identifiers
// under which it may have entries in the kernel (before it touches the
// kernel: the union of the earlier run's and its own) and, once a Set or
// Close has removed what sat at the others, just its own. A client whose
// owner changed between runs (another shortcut rule priority, another
// route protocol) thus has its earlier entries removed by its first Set,
// after the additions like every deletion; Sweep removes what the clients
// of an earlier run that did not register in this one left.

// recordOf returns the identifiers of o as a record.
func recordOf(o Owner) record {
	return record{RulePriorities: slices.Clone(o.RulePriorities), RouteProtocol: o.RouteProtocol,
		XfrmPriorities: slices.Clone(o.XfrmPriorities), Tables: slices.Clone(o.Tables)}
}

// union returns the identifiers of r and o (without r's sysctls).
func (r record) union(o Owner) record {
	u := record{RouteProtocol: r.RouteProtocol}
	u.RulePriorities = appendNew(slices.Clone(r.RulePriorities), o.RulePriorities...)
	u.XfrmPriorities = appendNew(slices.Clone(r.XfrmPriorities), o.XfrmPriorities...)
	u.Tables = appendNew(slices.Clone(r.Tables), o.Tables...)
	if u.RouteProtocol == 0 {
		u.RouteProtocol = o.RouteProtocol
	}
	return u
}

func appendNew[T comparable](s []T, v ...T) []T {
	for _, x := range v {
		if !slices.Contains(s, x) {
			s = append(s, x)
		}
	}
	return s
}

// without returns the identifiers of o that o2 does not name.
func (o Owner) without(o2 Owner) Owner {
	out := Owner{Name: o.Name}
	for _, p := range o.RulePriorities {
		if !slices.Contains(o2.RulePriorities, p) {
			out.RulePriorities = append(out.RulePriorities, p)
		}
	}
	if o.RouteProtocol != o2.RouteProtocol {
		out.RouteProtocol = o.RouteProtocol
	}
	for _, p := range o.XfrmPriorities {
		if !slices.Contains(o2.XfrmPriorities, p) {
			out.XfrmPriorities = append(out.XfrmPriorities, p)
		}
	}
	for _, t := range o.Tables {
		if !slices.Contains(o2.Tables, t) {
			out.Tables = append(out.Tables, t)
		}
	}
	return out
}

// with returns the identifiers of o and o2.
func (o Owner) with(o2 Owner) Owner {
	out := Owner{Name: o.Name, RouteProtocol: o.RouteProtocol}
	out.RulePriorities = appendNew(slices.Clone(o.RulePriorities), o2.RulePriorities...)
	out.XfrmPriorities = appendNew(slices.Clone(o.XfrmPriorities), o2.XfrmPriorities...)
	out.Tables = appendNew(slices.Clone(o.Tables), o2.Tables...)
	if out.RouteProtocol == 0 {
		out.RouteProtocol = o2.RouteProtocol
	}
	return out
}

func (o Owner) none() bool {
	return len(o.RulePriorities) == 0 && o.RouteProtocol == 0 && len(o.XfrmPriorities) == 0 && len(o.Tables) == 0
}

// ownerOf returns the identifiers of a record as an Owner named name.
func (r record) ownerOf(name string) Owner {
	return Owner{Name: name, RulePriorities: slices.Clone(r.RulePriorities), RouteProtocol: r.RouteProtocol,
		XfrmPriorities: slices.Clone(r.XfrmPriorities), Tables: slices.Clone(r.Tables)}
}

// staleFor returns what an earlier run of the client o left at
// identifiers o no longer owns and no other client (registered now, or
// recorded) claims; m.mu is held.
func (m *Manager) staleFor(o Owner) Owner {
	st := m.origs.owner(o.Name).ownerOf(o.Name).without(o)
	for _, x := range m.clients {
		st = st.without(x.owner)
	}
	for _, name := range m.origs.names() {
		if name != o.Name {
			st = st.without(m.origs.owner(name).ownerOf(name))
		}
	}
	return st
}

// Sweep removes what the clients of an earlier run that have no Client in
// this one left in the kernel (a configuration section removed between
// runs: its rules, routes, policies and tables go, the routes they
// replaced and the sysctls they set with Restore come back), as Close
// would have. Identifiers a registered client owns now are left alone.
// dmvpnd calls it once every client of its start has registered. Without
// a state file there is nothing to sweep.
func (m *Manager) Sweep(ctx context.Context) error {
	var errs []error
	for _, name := range m.origs.names() {
		m.mu.Lock()
		_, registered := m.clients[name]
		o := m.origs.owner(name).ownerOf(name)
		for _, x := range m.clients {
			o = o.without(x.owner)
		}
		m.mu.Unlock()
		if registered {
			continue
		}
		c, err := m.Client(o)
		if err != nil {
			errs = append(errs, fmt.Errorf("host: sweeping %s: %w", name, err))
			continue
		}
		if err := c.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("sweeping %s's leftovers: %w", name, err))
			c.Leave() // its identifiers are free again; the record stays for the next run
		}
	}
	return errors.Join(errs...)
}
