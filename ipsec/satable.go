package ipsec

import "net/netip"

// saTable is the manager's SA table: the SAs by IKE unique id, indexed by
// remote host, and the set of SAs that call for a NAT alias, so that what
// an event changes costs the SAs of its peer, not every SA (a hub holds
// one per spoke). The manager's mu guards it.
type saTable struct {
	byID   map[string]SA
	byHost map[netip.Addr][]string // IKE unique ids per remote host
	// claims holds the ids of the up SAs whose CHILD_SAs' remote traffic
	// selectors are not just their remote host (peers behind NAT in
	// tunnel mode, or selectors to refuse): the only SAs planAliases
	// has to look at. inners counts their inner addresses.
	claims map[string]struct{}
	inners map[netip.Addr]int
	// aliasDirty says a change may have changed the alias plan: an SA
	// that claims, or one whose host another SA claims as its inner
	// address (its ownership decides that claim).
	aliasDirty bool
}

func newSATable() saTable {
	return saTable{byID: map[string]SA{}, byHost: map[netip.Addr][]string{}, claims: map[string]struct{}{},
		inners: map[netip.Addr]int{}, aliasDirty: true}
}

// get returns the SA with IKE unique id id.
func (t *saTable) get(id string) (SA, bool) {
	sa, ok := t.byID[id]
	return sa, ok
}

// len is the number of SAs.
func (t *saTable) len() int { return len(t.byID) }

// put adds or replaces an SA.
func (t *saTable) put(sa SA) {
	if old, had := t.byID[sa.IKEID]; had {
		t.unindex(old)
	}
	t.byID[sa.IKEID] = sa
	t.byHost[sa.RemoteHost] = append(t.byHost[sa.RemoteHost], sa.IKEID)
	if inner, claims := aliasClaims(sa); claims {
		t.claims[sa.IKEID] = struct{}{}
		for _, a := range inner {
			t.inners[a]++
		}
		t.aliasDirty = true
	}
	if t.inners[sa.RemoteHost] > 0 {
		t.aliasDirty = true
	}
}

// del removes the SA with IKE unique id id, if there is one.
func (t *saTable) del(id string) {
	if old, had := t.byID[id]; had {
		t.unindex(old)
		delete(t.byID, id)
	}
}

// unindex drops an SA from the indexes (not from byID).
func (t *saTable) unindex(sa SA) {
	ids := t.byHost[sa.RemoteHost]
	for i, id := range ids {
		if id == sa.IKEID {
			ids = append(ids[:i], ids[i+1:]...)
			break
		}
	}
	if len(ids) == 0 {
		delete(t.byHost, sa.RemoteHost)
	} else {
		t.byHost[sa.RemoteHost] = ids
	}
	if _, ok := t.claims[sa.IKEID]; ok {
		delete(t.claims, sa.IKEID)
		inner, _ := aliasClaims(sa)
		for _, a := range inner {
			if t.inners[a]--; t.inners[a] <= 0 {
				delete(t.inners, a)
			}
		}
		t.aliasDirty = true
	}
	if t.inners[sa.RemoteHost] > 0 {
		t.aliasDirty = true
	}
}

// to returns the SAs with remote host nbma.
func (t *saTable) to(nbma netip.Addr) []SA {
	ids := t.byHost[nbma]
	if len(ids) == 0 {
		return nil
	}
	out := make([]SA, 0, len(ids))
	for _, id := range ids {
		out = append(out, t.byID[id])
	}
	return out
}

// up reports whether an SA with remote host nbma is up.
func (t *saTable) up(nbma netip.Addr) bool {
	for _, id := range t.byHost[nbma] {
		if sa := t.byID[id]; sa.Up() {
			return true
		}
	}
	return false
}

// claimants returns the SAs that claim NAT aliases.
func (t *saTable) claimants() []SA {
	out := make([]SA, 0, len(t.claims))
	for id := range t.claims {
		out = append(out, t.byID[id])
	}
	return out
}

// aliasClaims reports whether an SA matters to the alias plan (it is up
// and a remote traffic selector of an installed CHILD_SA is not its
// remote host) and the single addresses it claims.
func aliasClaims(sa SA) (inner []netip.Addr, claims bool) {
	eachRemoteTS(sa, func(_ string, a netip.Addr, single bool) {
		switch {
		case !single:
			claims = true
		case a != sa.RemoteHost:
			claims = true
			inner = append(inner, a)
		}
	})
	return inner, claims
}

// eachRemoteTS calls fn with each remote traffic selector of an up SA's
// installed CHILD_SAs, and its address when it is a single one.
func eachRemoteTS(sa SA, fn func(ts string, a netip.Addr, single bool)) {
	if !sa.Up() {
		return
	}
	for _, c := range sa.Children {
		if c.State != "INSTALLED" && c.State != "REKEYED" {
			continue
		}
		for _, ts := range c.RemoteTS {
			a, ok := tsAddr(ts)
			fn(ts, a, ok)
		}
	}
}
