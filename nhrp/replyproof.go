package nhrp

import (
	"fmt"
	"net/netip"
)

// Without a proof of the responder's networks (no Verifier, or a
// certificate without OU=NET=) a shortcut prefix is at least this long
// (IPv4, IPv6): longer ones are installed as the host route to the
// address asked for.
const (
	unprovenPrefix4 = 24
	unprovenPrefix6 = 64
)

// inTunnel reports whether a lies in this node's tunnel network. A node
// whose tunnel address is a host prefix knows no network: every address
// is taken as in it.
func (e *Engine) inTunnel(a netip.Addr) bool {
	p := e.ownPfx
	if !p.IsValid() || p.IsSingleIP() {
		return true
	}
	return p.Contains(a)
}

// tunnelPrefix decides what a shortcut prefix that a Resolution Reply
// gives for the address asked for, target, may be bound as. Tunnel
// addresses are bound one by one — each by its own registration, or by
// the OU=GRE= of its sender's certificate — never as a prefix: a prefix
// that overlaps the tunnel network (proven by OU=NET= or not) would take
// other nodes' tunnel addresses to the responder resp. Such a prefix is
// narrowed to the host prefix of target, and why says so; when target is
// a tunnel address that is not the responder's own, nothing proves even
// the host and refuse says why it must be refused. A node that knows no
// tunnel network (its address a host prefix) cannot tell which prefixes
// overlap it: it narrows every prefix of its own family to the host of
// target.
func (e *Engine) tunnelPrefix(target netip.Addr, prefix netip.Prefix, resp netip.Addr) (p netip.Prefix, why, refuse string) {
	if !prefix.IsValid() || prefix.IsSingleIP() {
		return prefix, "", ""
	}
	tun := e.ownPfx.Masked()
	known := tun.IsValid() && !tun.IsSingleIP()
	switch {
	case known && !tun.Overlaps(prefix):
		return prefix, "", ""
	case !known && prefix.Addr().BitLen() != e.own.BitLen():
		return prefix, "", "" // another family than the tunnel's addresses
	case known && tun.Contains(target) && target != resp:
		return netip.Prefix{}, "", fmt.Sprintf("%s overlaps the tunnel network %s and %s is a tunnel address that is not the responder's (%s): tunnel addresses are bound only by their own registration", prefix, tun, target, resp)
	case known:
		return hostPrefix(target), fmt.Sprintf("%s overlaps the tunnel network %s, whose addresses are bound one by one", prefix, tun), ""
	}
	return hostPrefix(target), fmt.Sprintf("%s may cover tunnel addresses: this node's tunnel network is unknown (its address is %s)", prefix, e.ownPfx), ""
}

// directResponder decides, without a Verifier, whether a Resolution
// Reply that came straight from its responder (not passed on by a
// server) may bind the responder's address resp to the NBMA address it
// came from, nbma. The registered NBMA address stands in for the
// certificate: the answer binds resp only when a server already proves
// it — resp is the address asked for (a server forwards a request only
// to the registered owner of its target, and request IDs are not
// guessable), or this node holds a binding of resp at nbma it learnt
// through a server. ok: proven; refuse: why it must be refused; neither:
// resp must first be resolved through a server.
func (e *Engine) directResponder(target, resp, nbma netip.Addr) (ok bool, refuse string) {
	cur := e.cache.get(hostPrefix(resp))
	switch {
	case cur != nil && cur.typ >= TypeCached && cur.nbma.IsValid() && cur.nbma != nbma:
		return false, fmt.Sprintf("%s is bound to %s, the answer came from %s", resp, cur.nbma, nbma)
	case resp == target:
		return true, ""
	case cur != nil && cur.typ >= TypeCached && cur.typ != TypeLocal && cur.nbma == nbma && !cur.unconfirmed:
		return true, ""
	}
	return false, ""
}

// confirmResponder resolves the responder's own address resp through a
// server before a direct answer from nbma is used: install runs once
// that resolution binds resp at nbma, refused (with the reason) if it
// binds it elsewhere or fails. r waits meanwhile, its retries stopped.
func (e *Engine) confirmResponder(r *resolution, resp, nbma netip.Addr, install func(), refused func(string)) {
	e.resolve(resp, "responder", nil)
	q := e.resolves[resp]
	if q == nil {
		refused(fmt.Sprintf("the responder's address %s could not be resolved through a server", resp))
		return
	}
	r.verifying = true
	r.timer.Stop()
	q.waiters = append(q.waiters, func() {
		if e.resolves[r.target] != r {
			return
		}
		r.verifying = false
		cur := e.cache.get(hostPrefix(resp))
		switch {
		case cur == nil || cur.typ < TypeCached || !cur.nbma.IsValid():
			refused(fmt.Sprintf("the responder's address %s did not resolve through a server", resp))
		case cur.nbma != nbma:
			refused(fmt.Sprintf("%s resolves to %s through a server, the answer came from %s", resp, cur.nbma, nbma))
		default:
			install()
		}
	})
}

// unprovenPrefix bounds a shortcut prefix that nothing proves to lie
// behind the responder resp (at nbma): it returns prefix when it is at
// least /24 (IPv6: /64), no broader than the route the request followed
// (when the Router reports the route's prefix), and covers no destination this node
// reaches elsewhere — no entry of its cache (a binding, registration,
// shortcut, server, static or local entry) at another NBMA address than
// the responder's. Otherwise it returns the host prefix of target, and
// why.
func (e *Engine) unprovenPrefix(target netip.Addr, prefix netip.Prefix, resp, nbma netip.Addr) (netip.Prefix, string) {
	if prefix.IsSingleIP() {
		return prefix, ""
	}
	host := hostPrefix(target)
	floor := unprovenPrefix4
	if prefix.Addr().Is6() {
		floor = unprovenPrefix6
	}
	if prefix.Bits() < floor {
		return host, fmt.Sprintf("%s is broader than /%d and nothing proves the networks behind %s", prefix, floor, resp)
	}
	// A Router that answers with the address itself for a route through
	// the tunnel (the daemon's kernel router) says nothing of the route's
	// extent: only a route prefix it reports bounds the shortcut.
	if ri, ok := e.route(target); ok && !ri.Local && ri.Prefix.IsValid() && !ri.Prefix.IsSingleIP() && ri.Prefix.Bits() > prefix.Bits() {
		return host, fmt.Sprintf("%s is broader than the route %s the request followed", prefix, ri.Prefix)
	}
	why := ""
	e.cache.under(prefix, func(en *entry) bool {
		switch {
		case en.typ == TypeIncomplete || en.typ == TypeNegative:
			return true
		case en.nbma.IsValid() && en.nbma == nbma:
			return true // the responder's own
		}
		to := en.nbma
		if en.typ == TypeShortcut {
			to = en.nextHop
		}
		if en.typ == TypeLocal {
			why = fmt.Sprintf("%s covers %s, local to this node", prefix, en.proto)
		} else {
			why = fmt.Sprintf("%s covers %s (%s at %s)", prefix, en.proto, en.typ, to)
		}
		return false
	})
	if why != "" {
		return host, why
	}
	return prefix, ""
}
