package ipsec

import (
	"context"
	"net/netip"
	"slices"
	"strings"

	"go.uber.org/zap"
)

// In tunnel mode (userspace ESP) the GRE packets inside an SA carry the
// addresses of its traffic selectors. A peer behind NAT proposes its
// private address, so its GRE arrives from that address while NHRP and
// the SA know the peer by its public one (the IKE SA's remote host). The
// data plane is told to translate: an alias maps the public NBMA address
// to the private inner one. Transport mode (kernel ESP) needs none: the
// decapsulated packet keeps the outer, public, address.
//
// An SA may only alias an address nobody else owns: an inner address that
// is another peer's NBMA address, or that two peers behind different NATs
// both use, would steer one peer's GRE into the other's SA. The SA that
// claims it (the newer of two aliases) is terminated and logged; two
// spokes behind NAT with the same private address cannot both have SAs in
// tunnel mode (kernel mode has no such limit).

// tsAddr returns the single address of a traffic selector as VICI lists
// it ("172.31.3.2/32[gre]"); ok is false for a range or a subnet.
func tsAddr(ts string) (netip.Addr, bool) {
	if i := strings.IndexByte(ts, '['); i >= 0 {
		ts = ts[:i]
	}
	p, err := netip.ParsePrefix(strings.TrimSpace(ts))
	if err != nil {
		a, err := netip.ParseAddr(strings.TrimSpace(ts))
		return a, err == nil
	}
	if p.Bits() != p.Addr().BitLen() {
		return netip.Addr{}, false
	}
	return p.Addr(), true
}

// aliasClaim is one SA's inner address for its peer.
type aliasClaim struct {
	sa    SA
	inner netip.Addr
}

// planAliases works out the aliases the SAs call for and the SAs to
// terminate (with why) because they claim what is not theirs.
func planAliases(sas []SA) (map[netip.Addr]netip.Addr, map[string]string) {
	owners := map[netip.Addr]bool{}
	for _, sa := range sas {
		if sa.Up() {
			owners[sa.RemoteHost] = true
		}
	}
	return planClaims(sas, func(a netip.Addr) bool { return owners[a] })
}

// planClaims is planAliases given the SAs that may claim (the others add
// nothing to the plan) and whether an address is a peer's NBMA address
// with an SA up.
func planClaims(sas []SA, owned func(netip.Addr) bool) (map[netip.Addr]netip.Addr, map[string]string) {
	bad := map[string]string{}
	var claims []aliasClaim
	for _, sa := range sas {
		eachRemoteTS(sa, func(ts string, a netip.Addr, single bool) {
			switch {
			case !single:
				bad[sa.IKEID] = "traffic selector " + ts + " is more than one address"
			case a == sa.RemoteHost:
			case owned(a):
				bad[sa.IKEID] = "inner address " + a.String() + " is another peer's NBMA address"
			default:
				claims = append(claims, aliasClaim{sa: sa, inner: a})
			}
		})
	}
	// Oldest first: of two peers claiming one inner address the first
	// keeps it.
	slices.SortStableFunc(claims, func(a, b aliasClaim) int { return a.sa.Established.Compare(b.sa.Established) })
	out := map[netip.Addr]netip.Addr{}
	byInner := map[netip.Addr]netip.Addr{}
	for _, c := range claims {
		if _, isBad := bad[c.sa.IKEID]; isBad {
			continue
		}
		if prev, ok := out[c.sa.RemoteHost]; ok && prev != c.inner {
			bad[c.sa.IKEID] = "a second inner address " + c.inner.String() + " for the same peer"
			continue
		}
		if o, taken := byInner[c.inner]; taken && o != c.sa.RemoteHost {
			bad[c.sa.IKEID] = "inner address " + c.inner.String() + " is already used by the peer behind " + o.String() + " (two peers behind NAT with one private address need kernel mode)"
			continue
		}
		out[c.sa.RemoteHost] = c.inner
		byInner[c.inner] = c.sa.RemoteHost
	}
	return out, bad
}

// syncAliases tells the data plane the aliases the current SAs call for
// and terminates the SAs that claim an address not theirs.
func (m *Manager) syncAliases(ctx context.Context) {
	if m.mode != ModeUserspace || m.hooks.Aliases == nil {
		return
	}
	m.mu.Lock()
	if !m.sas.aliasDirty {
		// Nothing changed that the plan depends on.
		m.mu.Unlock()
		return
	}
	m.sas.aliasDirty = false
	sas := m.sas.claimants()
	aliases, bad := planClaims(sas, m.sas.up)
	m.mu.Unlock()
	for id, why := range bad {
		var peer netip.Addr
		for _, sa := range sas {
			if sa.IKEID == id {
				peer = sa.RemoteHost
			}
		}
		m.stats.failure("traffic selector")
		if m.limitLog(peer, "alias") {
			m.log.Warn("SA terminated: its traffic selector claims an address that is not its own", zap.Stringer("peer", peer), zap.String("ike_id", id), zap.String("reason", why))
		}
		m.terminate(ctx, id)
	}
	if !m.setAliases(aliases) {
		// Tried again on the next change or refresh.
		m.mu.Lock()
		m.sas.aliasDirty = true
		m.mu.Unlock()
	}
}

// setAliases hands an alias set to the data plane unless it is the one
// already there; false when the data plane refused it.
func (m *Manager) setAliases(aliases map[netip.Addr]netip.Addr) bool {
	if m.hooks.Aliases == nil {
		return true
	}
	m.aliasMu.Lock()
	defer m.aliasMu.Unlock()
	if mapsEqual(m.aliases, aliases) {
		return true
	}
	if err := m.hooks.Aliases(aliases); err != nil {
		m.log.Error("data plane refused the NAT aliases", zap.Error(err))
		return false
	}
	if len(aliases) > 0 || len(m.aliases) > 0 {
		m.log.Info("peers behind NAT: inner addresses", zap.Any("aliases", aliases))
	}
	m.aliases = aliases
	return true
}

func mapsEqual(a, b map[netip.Addr]netip.Addr) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
