package nhrp

import (
	"cmp"
	"net/netip"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// unreachableAfter is how many registration attempts in a row may fail
// before a server counts as unreachable and a standby one takes over.
const unreachableAfter = 3

// nhsClient is this node's registration with one next hop server.
type nhsClient struct {
	cfg   NHSConfig
	nbma  netip.Addr
	proto netip.Addr // configured, or learned from replies
	host  string     // the DNS name it came from

	state       NHSState
	since       time.Time
	active      bool // selected to be registered with
	unreachable bool
	failures    int // attempts in a row without a positive reply
	attempt     int // attempts since the last reply
	reqIDs      []uint32
	lastReqID   uint32
	timer       *timer

	sent, replies, failed uint64
	lastReply, expires    time.Time
	lastErr               string
	// refused: the last answer was a refusal; losing the IPsec SA (which
	// the server ends when it refuses) must not bring the next attempt
	// forward, or a refused spoke would hammer its server.
	refused  bool
	lastSent time.Time // the last Registration Request
	public   netip.Addr
	removed  bool
}

// startNHS creates the clients of the configured servers.
func (e *Engine) startNHS() {
	for _, c := range e.cfg.NHS {
		if c.Hostname != "" {
			e.addDNSName(c)
			continue
		}
		e.addNHS(c, c.NBMA, "")
	}
	e.selectNHS()
}

// addNHS adds a client for a server at nbma.
func (e *Engine) addNHS(c NHSConfig, nbma netip.Addr, host string) *nhsClient {
	for _, n := range e.nhs {
		if n.nbma == nbma && !n.removed {
			return n
		}
	}
	n := &nhsClient{cfg: c, nbma: nbma, proto: c.Proto, host: host, state: NHSDown, since: e.now}
	e.nhs = append(e.nhs, n)
	e.ref(nbma)
	if n.proto.IsValid() {
		e.installNHSEntry(n)
	}
	return n
}

// removeNHS stops registering with a server.
func (e *Engine) removeNHS(n *nhsClient, reason string) {
	n.removed = true
	n.timer.Stop()
	for _, id := range n.reqIDs {
		delete(e.pending, id)
	}
	if n.state == NHSUp {
		e.emit(Event{Kind: EventNHSDown, NBMA: n.nbma, Proto: prefixOf(n.proto), Reason: reason})
	}
	if n.proto.IsValid() {
		if en := e.cache.get(hostPrefix(n.proto)); en != nil && en.typ == TypeNHS {
			e.removeEntry(en, CauseConfig)
		}
	}
	e.nhs = slices.DeleteFunc(e.nhs, func(x *nhsClient) bool { return x == n })
	e.unref(n.nbma, reason)
}

// installNHSEntry puts the server's binding in the cache and the kernel.
func (e *Engine) installNHSEntry(n *nhsClient) {
	p := hostPrefix(n.proto)
	if cur := e.cache.get(p); cur != nil {
		if cur.typ > TypeNHS || (cur.typ == TypeNHS && cur.nbma == n.nbma) {
			return
		}
		e.removeEntry(cur, CauseReplaced)
	}
	en := &entry{typ: TypeNHS, proto: p, nbma: n.nbma, created: e.now, flags: FlagRouter}
	e.addEntry(en)
}

// selectNHS decides which servers to register with: all of them, or the
// MaxNHS preferred (lowest priority value) reachable ones. Servers that
// are unreachable keep being probed; when a preferred one answers again it
// takes over and the least preferred active one goes to standby (and is
// told to drop this node's registration).
func (e *Engine) selectNHS() {
	order := slices.Clone(e.nhs)
	slices.SortStableFunc(order, func(a, b *nhsClient) int { return cmp.Compare(a.cfg.Priority, b.cfg.Priority) })
	count := 0
	for _, n := range order {
		want := e.cfg.MaxNHS == 0 || (!n.unreachable && count < e.cfg.MaxNHS)
		if want && !n.unreachable {
			count++
		}
		if want {
			if !n.active {
				n.active = true
				if n.state != NHSUp && n.state != NHSProbing {
					e.setNHSState(n, NHSProbing, "")
					e.register(n)
				}
			}
			continue
		}
		n.active = false
		if n.state == NHSUp {
			e.purgeOwnAt(n)
		}
		if n.unreachable {
			e.setNHSState(n, NHSProbing, "unreachable")
			if n.timer == nil || n.timer.index < 0 {
				e.scheduleRegister(n, backoff(n.failures, e.cfg.RetryMax))
			}
		} else {
			n.timer.Stop()
			e.setNHSState(n, NHSStandby, "preferred server is up")
		}
	}
}

// setNHSState changes a server's state and emits NHS up/down events.
func (e *Engine) setNHSState(n *nhsClient, s NHSState, reason string) {
	if n.state == s {
		return
	}
	was := n.state
	n.state, n.since = s, e.now
	switch {
	case s == NHSUp:
		e.emit(Event{Kind: EventNHSUp, NBMA: n.nbma, Proto: prefixOf(n.proto), HoldingTime: e.cfg.HoldingTime})
		e.updateMulticast()
	case was == NHSUp:
		e.emit(Event{Kind: EventNHSDown, NBMA: n.nbma, Proto: prefixOf(n.proto), Reason: reason})
		e.updateMulticast()
	}
}

// scheduleRegister sends a registration after d.
func (e *Engine) scheduleRegister(n *nhsClient, d time.Duration) {
	n.timer.Stop()
	n.timer = e.sched.after(e.now, d, func() {
		if !n.removed {
			e.register(n)
		}
	})
}

// register sends a Registration Request to a server and arms its
// retransmission.
func (e *Engine) register(n *nhsClient) {
	if n.removed || e.stopping {
		return
	}
	n.timer.Stop()
	id := e.nextReqID()
	n.lastReqID = id
	n.reqIDs = append(n.reqIDs, id)
	if len(n.reqIDs) > 8 {
		delete(e.pending, n.reqIDs[0])
		n.reqIDs = n.reqIDs[1:]
	}
	n.attempt++
	n.sent++
	n.lastSent = e.now
	if n.state == NHSDown {
		e.setNHSState(n, NHSProbing, "")
	}

	dst := n.proto
	if !dst.IsValid() {
		dst = e.own // the server answers for its own address (Cisco and FRR "dynamic")
	}
	p := e.newPacket(wire.TypeRegistrationRequest, dst, n.nbma)
	p.Flags = wire.RegFlagNAT
	prefixLen := uint8(e.own.BitLen())
	if !e.cfg.NoUnique {
		p.Flags |= wire.RegFlagU
		prefixLen = 0xff
	}
	p.RequestID = id
	p.CIEs = []wire.CIE{{PrefixLen: prefixLen, MTU: e.mtu(), HoldingTime: e.holding()}}
	natProto := n.proto
	if !natProto.IsValid() {
		natProto = netip.IPv6Unspecified()
		if e.own.Is4() {
			natProto = netip.IPv4Unspecified()
		}
	}
	p.Extensions = e.requestExtensions(true, []wire.CIE{{PrefixLen: uint8(e.own.BitLen()), NBMA: n.nbma, Proto: natProto}})
	e.addPending(&pendingReq{
		id: id, typ: wire.TypeRegistrationRequest, to: n.nbma,
		onReply: func(r *wire.Packet, from netip.Addr) { e.registrationReply(n, r, from) },
		onFail:  func(reason string) { e.registrationFailed(n, reason, true) },
	})
	e.send(p, n.nbma, "nhs", n.proto)
	n.timer = e.sched.after(e.now, backoff(n.attempt, e.cfg.RetryMax), func() {
		e.registrationTimeout(n)
	})
}

// registrationTimeout handles a registration without reply. The wait for
// the reply is the backoff (1 s, 2 s, 4 s … up to RetryMax), so the next
// request goes out at once: a server that comes back is registered with
// within RetryMax.
func (e *Engine) registrationTimeout(n *nhsClient) {
	if n.removed {
		return
	}
	n.failed++
	n.failures++
	n.lastErr = "no reply"
	if !(n.state == NHSUp && n.attempt < unreachableAfter && e.now.Before(n.expires)) {
		e.serverDown(n, "no reply")
		if n.removed || !(n.active || n.unreachable) {
			return
		}
	}
	e.register(n)
}

// registrationFailed handles a refused registration (a negative reply or
// an Error Indication): the server is down and asked again after a
// backoff capped at RetryMax.
func (e *Engine) registrationFailed(n *nhsClient, reason string, refused bool) {
	if n.removed {
		return
	}
	n.lastErr = reason
	if refused {
		n.failed++
		n.failures++
		n.refused = true
	}
	e.serverDown(n, reason)
	if n.active || n.unreachable {
		e.scheduleRegister(n, backoff(n.failures, e.cfg.RetryMax))
	}
}

// serverDown marks a server down; after unreachableAfter failures in a row
// it counts as unreachable and a standby server may take over.
func (e *Engine) serverDown(n *nhsClient, reason string) {
	if n.state == NHSUp || n.state == NHSProbing || n.state == NHSDown {
		e.setNHSState(n, NHSProbing, reason)
	}
	if n.failures >= unreachableAfter && !n.unreachable {
		n.unreachable = true
		e.log.Warn("next hop server unreachable", zap.Stringer("nbma", n.nbma), zap.String("reason", reason))
		e.selectNHS()
	}
	if n.failures > 0 && n.failures%unreachableAfter == 0 && !n.refused {
		e.resetPeer(n.nbma, "next hop server silent over its protection")
	}
}

// resetPeer gives up a peer that is up but does not answer (an IPsec SA
// that is established yet carries nothing): the PeerHandler tears it down
// and the next packet to the peer brings it up afresh.
func (e *Engine) resetPeer(nbma netip.Addr, reason string) {
	p := e.peers[nbma]
	if p == nil || p.state != peerUp || e.deps.Peers == nil {
		return
	}
	e.log.Info("resetting a silent peer", zap.Stringer("nbma", nbma), zap.String("reason", reason))
	e.releasePeer(p, reason)
}

// handleRegistrationReply matches a reply to its request.
func (e *Engine) handleRegistrationReply(p *wire.Packet, from netip.Addr) {
	if p.SrcProto != e.own {
		e.stats.drop("not-for-us")
		return
	}
	if r := e.matchReply(p, from); r != nil {
		r.onReply(p, from)
	}
}

// registrationReply handles a server's answer.
func (e *Engine) registrationReply(n *nhsClient, p *wire.Packet, from netip.Addr) {
	if n.removed {
		return
	}
	for _, id := range n.reqIDs {
		if e.pending[id] != nil {
			delete(e.pending, id)
			e.answered(id) // a late answer to an earlier try is no forgery
		}
	}
	n.reqIDs = n.reqIDs[:0]
	n.attempt = 0
	code := wire.CIEAdminProhibited
	hold := e.cfg.HoldingTime
	if len(p.CIEs) > 0 {
		code = p.CIEs[0].Code
		if ht := p.CIEs[0].HoldingTime; ht > 0 {
			hold = time.Duration(ht) * time.Second
		}
	}
	if code != wire.CIESuccess {
		e.log.Warn("registration refused", zap.Stringer("nhs", n.nbma), zap.Stringer("code", code))
		e.registrationFailed(n, "refused: "+code.String(), true)
		return
	}
	n.replies++
	n.lastReply = e.now
	n.expires = e.now.Add(hold)
	n.failures = 0
	n.lastErr = ""
	n.refused = false
	// Learn the server's tunnel address from the Responder Address.
	if x := p.Extension(wire.ExtResponderAddress); x != nil && len(x.CIEs) > 0 {
		if a := x.CIEs[0].Proto; a.IsValid() && a != n.proto && a.BitLen() == e.own.BitLen() {
			if n.proto.IsValid() {
				if en := e.cache.get(hostPrefix(n.proto)); en != nil && en.typ == TypeNHS {
					e.removeEntry(en, CauseReplaced)
				}
			}
			n.proto = a
			e.installNHSEntry(n)
		}
	}
	// Learn this node's public NBMA address from the NAT extension.
	if x := p.Extension(wire.ExtNATAddress); x != nil {
		for _, c := range x.CIEs {
			if c.Proto == e.own && c.NBMA.IsValid() {
				if c.NBMA != p.SrcNBMA && c.NBMA != n.public {
					e.log.Info("behind NAT", zap.Stringer("public_nbma", c.NBMA), zap.Stringer("nhs", n.nbma))
				}
				if c.NBMA != p.SrcNBMA {
					n.public = c.NBMA
				} else {
					n.public = netip.Addr{}
				}
			}
		}
	}
	e.setNHSState(n, NHSUp, "")
	e.flushMovePurges("registered from the new NBMA address")
	interval := e.cfg.RegistrationInterval
	if interval >= hold {
		interval = hold / 3
	}
	e.scheduleRegister(n, interval)
	if n.unreachable || !n.active {
		// A probe answered: the server may take over from a less
		// preferred one, or go back to standby.
		n.unreachable = false
		e.selectNHS()
	}
}

// publicNBMA returns this node's NBMA address as servers see it, when it
// is behind NAT.
func (e *Engine) publicNBMA() netip.Addr {
	for _, n := range e.nhs {
		if n.public.IsValid() && n.state == NHSUp {
			return n.public
		}
	}
	return netip.Addr{}
}

// reregisterAll sends registrations to every active server at once (the
// local NBMA changed, IPsec came back, a server restarted).
func (e *Engine) reregisterAll(reason string) {
	for _, n := range e.nhs {
		if n.active || n.unreachable {
			n.failures, n.attempt = 0, 0
			e.log.Info("registering again", zap.Stringer("nhs", n.nbma), zap.String("reason", reason))
			e.register(n)
		}
	}
}

// nhsByNBMA returns the client of a server.
func (e *Engine) nhsByNBMA(a netip.Addr) *nhsClient {
	for _, n := range e.nhs {
		if n.nbma == a {
			return n
		}
	}
	return nil
}

// upNHS returns the preferred server that is up, or nil.
func (e *Engine) upNHS() *nhsClient {
	var best *nhsClient
	for _, n := range e.nhs {
		if n.state == NHSUp && (best == nil || n.cfg.Priority < best.cfg.Priority) {
			best = n
		}
	}
	return best
}

// multicastDelay coalesces multicast list updates: a hub with thousands of
// clients registering at once rebuilds the list once, not per client.
const multicastDelay = 100 * time.Millisecond

// updateMulticast schedules an update of the tunnel's multicast
// replication list.
func (e *Engine) updateMulticast() {
	if e.cfg.Multicast == MulticastOff || e.mcastPending {
		return
	}
	e.mcastPending = true
	e.sched.after(e.now, multicastDelay, func() {
		e.mcastPending = false
		e.applyMulticast()
	})
}

// applyMulticast sets the tunnel's multicast replication list: in
// dynamic mode from the clients' NBMA addresses the engine counts as
// entries come and go (mcast.go), as changes when the tunnel takes them.
func (e *Engine) applyMulticast() {
	var list []netip.Addr
	switch e.cfg.Multicast {
	case MulticastOff:
		return
	case MulticastStatic:
		list = e.cfg.MulticastNBMA
	case MulticastNHS:
		for _, n := range e.nhs {
			if n.state == NHSUp {
				list = append(list, n.nbma)
			}
		}
	case MulticastDynamic:
		e.applyDynamicMulticast()
		return
	}
	e.mcast.synced = false
	slices.SortFunc(list, netip.Addr.Compare)
	list = slices.Compact(list)
	if err := e.tun.SetMulticast(list); err != nil {
		e.log.Warn("setting the multicast list", zap.Error(err))
	}
}

// neighborOf returns the kernel neighbour an entry needs, if any.
func neighborOf(en *entry) (gre.Neighbor, bool) {
	if !en.host() || !en.nbma.IsValid() {
		return gre.Neighbor{}, false
	}
	switch en.typ {
	case TypeCached, TypeDynamic, TypeNHS, TypeStatic:
		return gre.Neighbor{Proto: en.proto.Addr(), NBMA: en.nbma, Static: en.typ == TypeStatic || en.typ == TypeNHS}, true
	}
	return gre.Neighbor{}, false
}
