package host

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// change is one kernel request of a plan.
type change struct {
	note string
	do   func(ctx context.Context) error
}

// present is what the kernel has under a client's identifiers.
type present struct {
	rules  []Rule
	routes []Route
	xfrm   []XfrmPolicy
	tables map[TableID]bool
}

// read lists what the kernel has under the identifiers of o and of
// stale (whose route protocol may differ from o's).
func (c *Client) read(ctx context.Context, o, stale Owner) (present, error) {
	k := c.m.k
	protocols := []int{o.RouteProtocol}
	if stale.RouteProtocol != 0 && stale.RouteProtocol != o.RouteProtocol {
		protocols = append(protocols, stale.RouteProtocol)
	}
	o = o.with(stale)
	var p present
	var errs []error
	if len(o.RulePriorities) > 0 {
		for _, f := range []Family{IPv4, IPv6} {
			rs, err := k.Rules(ctx, f)
			if err != nil {
				errs = append(errs, fmt.Errorf("listing %v rules: %w", f, err))
			}
			for _, r := range rs {
				if slices.Contains(o.RulePriorities, r.Priority) {
					p.rules = append(p.rules, r)
				}
			}
		}
	}
	for _, proto := range protocols {
		if proto == 0 {
			continue
		}
		for _, f := range []Family{IPv4, IPv6} {
			rs, err := k.Routes(ctx, f, proto)
			if err != nil {
				errs = append(errs, fmt.Errorf("listing %v routes: %w", f, err))
			}
			p.routes = append(p.routes, rs...)
		}
	}
	if len(o.XfrmPriorities) > 0 {
		ps, err := k.XfrmPolicies(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("listing xfrm policies: %w", err))
		}
		for _, x := range ps {
			if slices.Contains(o.XfrmPriorities, x.Priority) {
				p.xfrm = append(p.xfrm, x)
			}
		}
	}
	if len(o.Tables) > 0 {
		ts, err := k.NFTables(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("listing nftables tables: %w", err))
		}
		p.tables = map[TableID]bool{}
		for _, t := range ts {
			p.tables[t] = true
		}
	}
	return p, errors.Join(errs...)
}

// apply brings the kernel to cfg: it plans the additions and in-place
// replacements, then the deletions, and runs them in that order. With
// closing, the sysctls set with Restore are restored.
func (c *Client) apply(ctx context.Context, cfg *Config, closing bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	// The client's identifiers and those an earlier run of it left
	// entries at: the latter's entries are never desired.
	c.m.mu.Lock()
	stale, staleSysctls := c.stale, c.staleSysctls
	c.m.mu.Unlock()
	owned := c.owner.with(stale)
	have, err := c.read(ctx, c.owner, stale)
	if err != nil {
		return err
	}
	k := c.m.k
	var adds, dels []change
	var errs []error

	// xfrm policies: replaced in place (their key has no priority).
	xwant := map[xfrmKey]XfrmPolicy{}
	for _, p := range cfg.Xfrm {
		xwant[p.key()] = p.normal()
	}
	xhave := map[xfrmKey]XfrmPolicy{}
	for _, p := range have.xfrm {
		xhave[p.key()] = p.normal()
	}
	for _, p := range cfg.Xfrm {
		if h, ok := xhave[p.key()]; !ok || h != p.normal() {
			adds = append(adds, change{"update " + p.String(), func(ctx context.Context) error { return k.UpdateXfrmPolicy(ctx, p) }})
		}
	}
	for _, p := range have.xfrm {
		if _, ok := xwant[p.key()]; !ok {
			dels = append(dels, change{"delete " + p.String(), func(ctx context.Context) error { return k.DelXfrmPolicy(ctx, p) }})
		}
	}

	// Rules: added beside the old ones (the kernel cannot replace a rule).
	matched := make([]bool, len(have.rules))
	for _, r := range cfg.Rules {
		found := false
		for i, h := range have.rules {
			if !matched[i] && h.normal() == r.normal() {
				matched[i], found = true, true
				break
			}
		}
		if !found {
			r := r.normal()
			adds = append(adds, change{"add " + r.String(), func(ctx context.Context) error { return k.AddRule(ctx, r) }})
		}
	}
	for i, h := range have.rules {
		if !matched[i] {
			dels = append(dels, change{"delete " + h.String(), func(ctx context.Context) error { return k.DelRule(ctx, h) }})
		}
	}

	// Routes: replaced in place by key. Linear in the routes: what is
	// there is indexed by key once, and the routes of other programs at
	// the keys of new routes come from one listing per table (a BGP
	// table of thousands of routes is one Set).
	haveAt := make(map[routeKey][]Route, len(have.routes))
	for _, h := range have.routes {
		haveAt[h.key()] = append(haveAt[h.key()], h)
	}
	links := map[string]int{}
	others := map[tableOf]map[routeKey][]Route{}
	rwant := make(map[routeKey]bool, len(cfg.Routes))
	for _, r := range cfg.Routes {
		r.Protocol = c.owner.RouteProtocol
		rwant[r.key()] = true
		r, err := c.resolve(r, links)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		rk := r.key()
		same, ours := false, false
		for _, h := range haveAt[rk] {
			ours = true
			same = same || (h.Protocol == r.Protocol && h.same(r)) // a stale protocol's route is replaced
		}
		if same {
			continue
		}
		var foreign []Route
		if !ours {
			// Another program's route at this key is kept, to be put
			// back when ours goes.
			at, err := c.tableRoutes(ctx, others, r)
			if err != nil {
				errs = append(errs, fmt.Errorf("route %v: listing the routes there: %w", r, err))
				continue
			}
			for _, x := range at[rk] {
				if x.Protocol != r.Protocol {
					foreign = append(foreign, x)
				}
			}
		}
		adds = append(adds, change{"replace " + r.String(), func(ctx context.Context) error {
			for _, x := range foreign {
				if err := c.m.origs.displace(c.owner.Name, x); err != nil {
					return err
				}
			}
			return k.ReplaceRoute(ctx, r)
		}})
	}
	for _, h := range have.routes {
		if rwant[h.key()] {
			continue
		}
		if x, ok := c.m.origs.displaced(c.owner.Name, h.key()); ok {
			// Put back, in place, what ours replaced.
			dels = append(dels, change{"restore " + x.String(), func(ctx context.Context) error {
				if err := k.ReplaceRoute(ctx, x); err != nil {
					return err
				}
				return c.m.origs.restored(c.owner.Name, h.key())
			}})
			continue
		}
		dels = append(dels, change{"delete " + h.String(), func(ctx context.Context) error { return k.DelRoute(ctx, h) }})
	}

	// nftables tables: replaced whole, in one transaction.
	twant := map[TableID]bool{}
	for _, t := range cfg.Tables {
		twant[t.TableID] = true
		if t.Rev != "" && have.tables[t.TableID] && c.revs[t.TableID] == t.Rev {
			continue
		}
		adds = append(adds, change{"replace " + t.TableID.String() + " rev " + t.Rev, func(ctx context.Context) error {
			if err := k.ReplaceNFTable(ctx, t); err != nil {
				delete(c.revs, t.TableID)
				return err
			}
			c.revs[t.TableID] = t.Rev
			return nil
		}})
	}
	for _, id := range owned.Tables {
		if have.tables[id] && !twant[id] {
			dels = append(dels, change{"delete " + id.String(), func(ctx context.Context) error {
				delete(c.revs, id)
				return k.DelNFTable(ctx, id)
			}})
		}
	}

	sadds, sdels, serrs := c.planSysctls(cfg, closing, staleSysctls)
	adds, dels, errs = append(adds, sadds...), append(dels, sdels...), append(errs, serrs...)

	failed := len(errs) > 0
	for i, ch := range adds {
		if err := ctx.Err(); err != nil {
			return errors.Join(append(errs, fmt.Errorf("stopped after %d of %d changes, nothing deleted: %w", i, len(adds)+len(dels), err))...)
		}
		if err := ch.do(ctx); err != nil {
			errs, failed = append(errs, fmt.Errorf("%s: %w", ch.note, err)), true
			continue
		}
		c.m.note(c.owner.Name, ch.note)
	}
	if failed && len(dels) > 0 {
		return errors.Join(append(errs, fmt.Errorf("%d old entries kept in force: an addition failed", len(dels)))...)
	}
	for i, ch := range dels {
		if err := ctx.Err(); err != nil {
			return errors.Join(append(errs, fmt.Errorf("stopped after %d of %d changes: %w", len(adds)+i, len(adds)+len(dels), err))...)
		}
		if err := ch.do(ctx); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", ch.note, err))
			continue
		}
		c.m.note(c.owner.Name, ch.note)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if !stale.none() || len(staleSysctls) > 0 {
		// What the earlier run left is settled: only the client's own
		// identifiers are recorded from now on.
		c.m.mu.Lock()
		c.stale, c.staleSysctls = Owner{}, nil
		c.m.mu.Unlock()
		if err := c.m.origs.setIdentifiers(c.owner.Name, recordOf(c.owner)); err != nil {
			return err
		}
	}
	return nil
}

func (m *Manager) note(owner, change string) {
	if m.changed != nil {
		m.changed(owner, change)
	}
}

// resolve returns r with every next hop's device as an index.
func (c *Client) resolve(r Route, links map[string]int) (Route, error) {
	r = r.normal()
	for i := range r.NextHops {
		h := &r.NextHops[i]
		if h.Dev == "" {
			continue
		}
		idx, ok := links[h.Dev]
		if !ok {
			var err error
			if idx, err = c.m.k.LinkIndex(h.Dev); err != nil {
				return r, fmt.Errorf("route %v: %w", r, err)
			}
			links[h.Dev] = idx
		}
		h.Index = idx
	}
	return r.normal(), nil
}

// tableOf names a routing table of a family.
type tableOf struct {
	f     Family
	table int
}

// tableRoutes returns the routes of r's table by key, listed once per
// table and Set (cache).
func (c *Client) tableRoutes(ctx context.Context, cache map[tableOf]map[routeKey][]Route, r Route) (map[routeKey][]Route, error) {
	t := tableOf{IPv4, r.Table}
	if r.Dst.Addr().Is6() {
		t.f = IPv6
	}
	if at, ok := cache[t]; ok {
		return at, nil
	}
	rs, err := c.m.k.TableRoutes(ctx, t.f, t.table)
	if err != nil {
		return nil, err
	}
	at := make(map[routeKey][]Route, len(rs))
	for _, x := range rs {
		at[x.key()] = append(at[x.key()], x)
	}
	cache[t] = at
	return at, nil
}

// planSysctls plans the writes of the desired sysctls and the restores of
// those no longer desired (or all of them, closing), among them the keys
// an earlier run of the client set with Restore (stale).
func (c *Client) planSysctls(cfg *Config, closing bool, stale []string) (adds, dels []change, errs []error) {
	k, origs := c.m.k, c.m.origs
	want := map[string]Sysctl{}
	for _, s := range cfg.Sysctls {
		want[s.Key] = s
		cur, err := k.ReadSysctl(s.Key)
		if errors.Is(err, fs.ErrNotExist) && s.Optional {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("sysctl %s: %w", s.Key, err))
			continue
		}
		cur = strings.TrimSpace(cur)
		if cur == s.Value || (s.AtLeast && atLeast(cur, s.Value)) {
			continue
		}
		adds = append(adds, change{fmt.Sprintf("set sysctl %s = %s (was %s)", s.Key, s.Value, cur), func(context.Context) error {
			if s.Restore {
				if err := origs.record(c.owner.Name, s.Key, cur); err != nil {
					return err
				}
			}
			return k.WriteSysctl(s.Key, s.Value)
		}})
	}
	c.m.mu.Lock()
	old := maps.Clone(c.sysctls)
	c.sysctls = want
	c.m.mu.Unlock()
	for _, key := range stale {
		if _, ok := old[key]; !ok {
			old[key] = Sysctl{Key: key, Restore: true}
		}
	}
	for _, key := range slices.Sorted(maps.Keys(old)) {
		s := old[key]
		if _, ok := want[key]; ok && !closing {
			continue
		}
		orig, ok := origs.get(key)
		if !s.Restore || !ok {
			continue
		}
		if other := c.m.sysctlOwner(c, key); other != "" {
			// Set by another client now, which keeps the original.
			dels = append(dels, change{fmt.Sprintf("leave sysctl %s to %s", key, other), func(context.Context) error {
				return origs.disown(c.owner.Name, key)
			}})
			continue
		}
		dels = append(dels, change{fmt.Sprintf("restore sysctl %s = %s", key, orig), func(context.Context) error {
			if err := k.WriteSysctl(key, orig); err != nil {
				return err
			}
			return origs.forget(c.owner.Name, key)
		}})
	}
	return adds, dels, errs
}

// atLeast reports whether the numeric value cur is at least want.
func atLeast(cur, want string) bool {
	a, err1 := strconv.ParseInt(cur, 10, 64)
	b, err2 := strconv.ParseInt(want, 10, 64)
	return err1 == nil && err2 == nil && a >= b
}
