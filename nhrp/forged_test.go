package nhrp

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// Forged packets: spoke3, a registered spoke, sends each kind of NHRP
// packet with claims that are not its own, to the hub and to the other
// spokes, directly and through the hub. Nothing of another node changes,
// traffic between the others keeps going direct, and every refusal is
// counted and reported. Each case runs without IPsec (the registered NBMA
// address is the proof) and with certificates (a Verifier, and a
// PeerHandler that checks a shortcut peer's certificate).

// cert is what a node's certificate proves: its tunnel address and the
// networks behind it.
type cert struct {
	gre  netip.Addr
	nets []netip.Prefix
}

// certs are the lab's certificates by NBMA address: the Authorizer of
// registrations, the Verifier of claims and a PeerHandler that checks a
// shortcut peer's certificate, as the IPsec manager does.
type certs struct {
	mu sync.Mutex
	m  map[netip.Addr]cert
}

func labCerts() *certs {
	c := &certs{m: map[netip.Addr]cert{hubNBMA(1): {gre: hubAddr(1)}}}
	for i := 1; i <= 3; i++ {
		c.m[spokeNBMA(i)] = cert{gre: spokeAddr(i), nets: []netip.Prefix{spokeLAN(i)}}
	}
	return c
}

func (c *certs) get(nbma netip.Addr) (cert, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	x, ok := c.m[nbma]
	return x, ok
}

func (c *certs) Authorize(ctx context.Context, r Registration) Verdict {
	x, ok := c.get(r.NBMA)
	if !ok || !r.Proto.IsSingleIP() || x.gre != r.Proto.Addr() {
		return Verdict{Code: uint8(wire.CIEAdminProhibited), Reason: "certificate names another address"}
	}
	return Verdict{Identity: "CN=" + x.gre.String(), Networks: x.nets}
}

func (c *certs) Verify(ctx context.Context, cl Claim) Verdict {
	x, ok := c.get(cl.NBMA)
	switch {
	case !ok:
		return Verdict{Code: 4, Reason: "no certificate at " + cl.NBMA.String()}
	case x.gre != cl.Proto:
		return Verdict{Code: 4, Reason: fmt.Sprintf("certificate is for GRE=%s, not %s", x.gre, cl.Proto)}
	case cl.Prefix.IsValid() && !within(cl.Prefix, x.nets):
		return Verdict{Code: 4, Reason: fmt.Sprintf("%s outside NET=%v", cl.Prefix, x.nets)}
	}
	return Verdict{Networks: x.nets}
}

func (c *certs) PeerUp(ctx context.Context, p Peer) error {
	if p.Role != "shortcut" || !p.Proto.IsValid() {
		return nil
	}
	if x, ok := c.get(p.NBMA); !ok || x.gre != p.Proto {
		return fmt.Errorf("shortcut to %s for %s: %w", p.NBMA, p.Proto, ErrIdentity)
	}
	return nil
}

func (c *certs) PeerDown(p Peer, reason string) {}

// forgeLab is a hub and three spokes; spoke1 has a shortcut to spoke2's
// LAN and spoke2 a binding of spoke1 (learned from its request).
type forgeLab struct {
	*lab
	hub, s1, s2, s3 *node
}

func newForgeLab(t *testing.T, withCerts bool) *forgeLab {
	l := &forgeLab{lab: newLab(t)}
	l.hub = l.addHub(1, hubConfig(), 1, 2, 3)
	var c *certs
	if withCerts {
		c = labCerts()
		l.hub.deps.Authorizer, l.hub.deps.Verifier, l.hub.deps.Peers = c, c, c
	}
	l.start(l.hub)
	for i := 1; i <= 3; i++ {
		s := l.addSpoke(i, 1, spokeConfig(1))
		if withCerts {
			s.deps.Verifier, s.deps.Peers = c, c
		}
		l.start(s)
	}
	l.s1, l.s2, l.s3 = l.nodes["spoke1"], l.nodes["spoke2"], l.nodes["spoke3"]
	settle(time.Second)
	l.send(l.s1, lanHost(1), lanHost(2))
	settle(time.Second)
	l.checkTraffic(t)
	if e, ok := l.s2.entry(t, hostPrefix(spokeAddr(1))); !ok || e.NBMA != spokeNBMA(1) {
		t.Fatalf("spoke2 did not learn spoke1 from its request: %+v", e)
	}
	return l
}

// checkTraffic: spoke1's LAN reaches spoke2's straight, and spoke2
// reaches spoke1's tunnel address straight.
func (l *forgeLab) checkTraffic(t *testing.T) {
	t.Helper()
	if nbma, err := l.s1.dev.Forward(lanHost(2)); err != nil || nbma != spokeNBMA(2) {
		t.Errorf("spoke1 → spoke2's LAN goes to %v (%v), want spoke2 direct", nbma, err)
	}
	if nbma, err := l.s2.dev.Forward(spokeAddr(1)); err != nil || nbma != spokeNBMA(1) {
		t.Errorf("spoke2 → spoke1 goes to %v (%v), want spoke1 direct", nbma, err)
	}
}

// state is what must not change: every binding of the hub and of
// spoke1 and spoke2 (type, address, NBMA, next hop) and their servers.
func (l *forgeLab) state(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, n := range []*node{l.hub, l.s1, l.s2} {
		for _, e := range n.cache(t) {
			if e.Type == TypeIncomplete || e.Type == TypeNegative || e.Type == TypeLocal {
				continue
			}
			out = append(out, fmt.Sprintf("%s %s %s nbma %s via %s", n.name, e.Type, e.Proto, e.NBMA, e.NextHop))
		}
		if n != l.hub {
			st := n.nhsState(t, hubNBMA(1))
			out = append(out, fmt.Sprintf("%s nhs %s sent %d", n.name, st.State, st.Sent))
		}
	}
	slices.Sort(out)
	return out
}

// refused returns a node's count of a refusal and the refusal events.
func refused(t *testing.T, n *node, r Refusal) (uint64, []Event) {
	t.Helper()
	tr, err := n.eng.Traffic(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var evs []Event
	for _, e := range n.eventsOf(EventPacketRefused) {
		if e.Refusal == r {
			evs = append(evs, e)
		}
	}
	return tr.Refused[r.String()], evs
}

// forge encodes a packet as spoke3 would send it.
func forge(t *testing.T, p *wire.Packet) []byte {
	t.Helper()
	if p.HopCount == 0 {
		p.HopCount = HopCount
	}
	if !p.SrcNBMA.IsValid() {
		p.SrcNBMA = spokeNBMA(3)
	}
	b, err := p.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func resolutionRequest(src, dst netip.Addr, hold uint16) *wire.Packet {
	return &wire.Packet{Type: wire.TypeResolutionRequest, RequestID: 0x5eed,
		Flags:    wire.ResFlagQ | wire.ResFlagA | wire.ResFlagS | wire.ResFlagNAT,
		SrcProto: src, DstProto: dst, CIEs: []wire.CIE{{HoldingTime: hold}},
		Extensions: []wire.Extension{{Type: wire.ExtResponderAddress, Compulsory: true},
			{Type: wire.ExtForwardTransit, Compulsory: true}, {Type: wire.ExtReverseTransit, Compulsory: true}}}
}

// resolutionReply answers for prefix behind resp, at nbma.
func resolutionReply(id uint32, requester, target netip.Addr, bits uint8, resp, nbma netip.Addr) *wire.Packet {
	return &wire.Packet{Type: wire.TypeResolutionReply, RequestID: id,
		Flags:    wire.ResFlagQ | wire.ResFlagA | wire.ResFlagD | wire.ResFlagU | wire.ResFlagS,
		SrcProto: requester, DstProto: target, SrcNBMA: spokeNBMA(2),
		CIEs: []wire.CIE{{PrefixLen: bits, HoldingTime: 7200, NBMA: nbma, Proto: resp}},
		Extensions: []wire.Extension{{Type: wire.ExtResponderAddress, Compulsory: true, CIEs: []wire.CIE{{NBMA: nbma, Proto: resp}}},
			{Type: wire.ExtForwardTransit, Compulsory: true, CIEs: []wire.CIE{{NBMA: hubNBMA(1), Proto: hubAddr(1)}}},
			{Type: wire.ExtReverseTransit, Compulsory: true}}}
}

// forgedCase is one forged packet, where it is sent and what the
// receiver must refuse.
type forgedCase struct {
	name   string
	to     func(l *forgeLab) *node
	packet func(t *testing.T, l *forgeLab) *wire.Packet
	// refusal is the check the receiver fails; wantReg instead counts a
	// refused registration, with the CIE code regCode when it is set.
	refusal Refusal
	wantReg bool
	regCode wire.CIECode
}

var forgedCases = []forgedCase{
	{
		name: "resolution request to the hub claiming spoke1's address", refusal: RefusedRequestSource,
		to: func(l *forgeLab) *node { return l.hub },
		packet: func(t *testing.T, l *forgeLab) *wire.Packet {
			return resolutionRequest(spokeAddr(1), spokeAddr(2), 7200)
		},
	},
	{
		name: "resolution request to the hub with spoke1's NBMA address", refusal: RefusedRequestSource,
		to: func(l *forgeLab) *node { return l.hub },
		packet: func(t *testing.T, l *forgeLab) *wire.Packet {
			p := resolutionRequest(spokeAddr(3), spokeAddr(2), 7200)
			p.SrcNBMA = spokeNBMA(1)
			return p
		},
	},
	{
		name: "resolution request to the hub with a NAT address at spoke1's", refusal: RefusedRequestSource,
		to: func(l *forgeLab) *node { return l.hub },
		packet: func(t *testing.T, l *forgeLab) *wire.Packet {
			p := resolutionRequest(spokeAddr(3), lanHost(2), 7200)
			p.Extensions = append(p.Extensions, wire.Extension{Type: wire.ExtNATAddress,
				CIEs: []wire.CIE{{PrefixLen: 32, NBMA: spokeNBMA(1), Proto: spokeAddr(3)}}})
			return p
		},
	},
	{
		name: "resolution request to spoke2 claiming spoke1's address", refusal: RefusedRequestSource,
		to: func(l *forgeLab) *node { return l.s2 },
		packet: func(t *testing.T, l *forgeLab) *wire.Packet {
			return resolutionRequest(spokeAddr(1), spokeAddr(2), 7200)
		},
	},
	{
		name: "resolution reply to spoke2 answering nothing", refusal: RefusedReplyUnmatched,
		to: func(l *forgeLab) *node { return l.s2 },
		packet: func(t *testing.T, l *forgeLab) *wire.Packet {
			return resolutionReply(0x1234567, spokeAddr(2), lanHost(1), 24, spokeAddr(1), spokeNBMA(3))
		},
	},
	{
		name: "resolution reply through the hub answering nothing", refusal: RefusedReplyUnmatched,
		to: func(l *forgeLab) *node { return l.hub },
		packet: func(t *testing.T, l *forgeLab) *wire.Packet {
			return resolutionReply(0x1234567, spokeAddr(2), lanHost(1), 24, spokeAddr(1), spokeNBMA(3))
		},
	},
	{
		name: "purge at spoke2 of its binding of spoke1", refusal: RefusedPurge,
		to: func(l *forgeLab) *node { return l.s2 },
		packet: func(t *testing.T, l *forgeLab) *wire.Packet {
			return &wire.Packet{Type: wire.TypePurgeRequest, RequestID: 77, SrcProto: spokeAddr(3), DstProto: spokeAddr(2),
				CIEs: []wire.CIE{{PrefixLen: 32, Proto: spokeAddr(1)}}}
		},
	},
	{
		name: "purge at spoke1 of its shortcut to spoke2's LAN", refusal: RefusedPurge,
		to: func(l *forgeLab) *node { return l.s1 },
		packet: func(t *testing.T, l *forgeLab) *wire.Packet {
			return &wire.Packet{Type: wire.TypePurgeRequest, RequestID: 78, SrcProto: spokeAddr(3), DstProto: spokeAddr(1),
				CIEs: []wire.CIE{{PrefixLen: 16, Proto: netip.MustParseAddr("10.12.0.0")}}}
		},
	},
	{
		name: "purge at the hub of spoke1's registration", refusal: RefusedPurge,
		to: func(l *forgeLab) *node { return l.hub },
		packet: func(t *testing.T, l *forgeLab) *wire.Packet {
			return &wire.Packet{Type: wire.TypePurgeRequest, RequestID: 79, SrcProto: spokeAddr(1), DstProto: hubAddr(1),
				CIEs: []wire.CIE{{PrefixLen: 32, Proto: spokeAddr(1)}}}
		},
	},
	{
		name: "purge at spoke2 of its own registration", refusal: RefusedPurge,
		to: func(l *forgeLab) *node { return l.s2 },
		packet: func(t *testing.T, l *forgeLab) *wire.Packet {
			return &wire.Packet{Type: wire.TypePurgeRequest, RequestID: 80, SrcProto: hubAddr(1), DstProto: spokeAddr(2),
				CIEs: []wire.CIE{{PrefixLen: 32, Proto: spokeAddr(2)}}}
		},
	},
	{
		name: "traffic indication to spoke2", refusal: RefusedTrafficIndication,
		to: func(l *forgeLab) *node { return l.s2 },
		packet: func(t *testing.T, l *forgeLab) *wire.Packet {
			return &wire.Packet{Type: wire.TypeTrafficIndication, SrcProto: hubAddr(1), DstProto: spokeAddr(2),
				TrafficCode: wire.TrafficRedirect, Payload: ipv4Packet(lanHost(2), lanHost(3))}
		},
	},
	{
		name: "error indication to spoke2 about a request it did not send", refusal: RefusedErrorIndication,
		to: func(l *forgeLab) *node { return l.s2 },
		packet: func(t *testing.T, l *forgeLab) *wire.Packet {
			q := forge(t, &wire.Packet{Type: wire.TypeRegistrationRequest, RequestID: 0x77777, SrcNBMA: spokeNBMA(2),
				SrcProto: spokeAddr(2), DstProto: hubAddr(1), CIEs: []wire.CIE{{PrefixLen: 255, HoldingTime: 600}}})
			return &wire.Packet{Type: wire.TypeErrorIndication, SrcProto: hubAddr(1), DstProto: spokeAddr(2),
				ErrorCode: wire.ErrorAuthenticationFailure, Payload: q}
		},
	},
	{
		name: "registration reply to spoke2", refusal: RefusedReplyUnmatched,
		to: func(l *forgeLab) *node { return l.s2 },
		packet: func(t *testing.T, l *forgeLab) *wire.Packet {
			return &wire.Packet{Type: wire.TypeRegistrationReply, RequestID: 0x99999, Flags: wire.RegFlagU,
				SrcProto: spokeAddr(2), DstProto: hubAddr(1), CIEs: []wire.CIE{{Code: wire.CIEAdminProhibited, PrefixLen: 255}}}
		},
	},
	{
		name: "registration request for spoke1's address", wantReg: true,
		to: func(l *forgeLab) *node { return l.hub },
		packet: func(t *testing.T, l *forgeLab) *wire.Packet {
			return &wire.Packet{Type: wire.TypeRegistrationRequest, RequestID: 81, Flags: wire.RegFlagU | wire.RegFlagNAT,
				SrcProto: spokeAddr(1), DstProto: hubAddr(1), CIEs: []wire.CIE{{PrefixLen: 255, HoldingTime: 7200}}}
		},
	},
	{
		// Its own source, spoke1's address in the CIE: unproven, so
		// refused as prohibited (not only as taken: a no-unique binding
		// would have moved).
		name: "registration request from spoke3 with a CIE for spoke1's address", wantReg: true, regCode: wire.CIEAdminProhibited,
		to: func(l *forgeLab) *node { return l.hub },
		packet: func(t *testing.T, l *forgeLab) *wire.Packet {
			return &wire.Packet{Type: wire.TypeRegistrationRequest, RequestID: 82,
				SrcProto: spokeAddr(3), DstProto: hubAddr(1), CIEs: []wire.CIE{{PrefixLen: 255, HoldingTime: 7200, Proto: spokeAddr(1)}}}
		},
	},
	{
		name: "registration request from spoke3 with a CIE for an unheld address", wantReg: true, regCode: wire.CIEAdminProhibited,
		to: func(l *forgeLab) *node { return l.hub },
		packet: func(t *testing.T, l *forgeLab) *wire.Packet {
			return &wire.Packet{Type: wire.TypeRegistrationRequest, RequestID: 83,
				SrcProto: spokeAddr(3), DstProto: hubAddr(1), CIEs: []wire.CIE{{PrefixLen: 255, HoldingTime: 7200, Proto: netip.MustParseAddr("10.0.0.50")}}}
		},
	},
}

// TestForgedPackets sends every forged packet from spoke3's NBMA address,
// without IPsec and with certificates.
func TestForgedPackets(t *testing.T) {
	for _, withCerts := range []bool{false, true} {
		mode := "registered-nbma"
		if withCerts {
			mode = "certificates"
		}
		for _, c := range forgedCases {
			t.Run(mode+"/"+c.name, func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					l := newForgeLab(t, withCerts)
					to := c.to(l)
					before := l.state(t)
					n0, _ := refused(t, to, c.refusal)
					regs0 := len(to.eventsOf(EventRegistrationRefused))
					l.inet.Inject(spokeNBMA(3), to.dev.Info().NBMA[0], forge(t, c.packet(t, l)))
					settle(2 * time.Second)
					if c.wantReg {
						evs := to.eventsOf(EventRegistrationRefused)
						if got := len(evs); got != regs0+1 {
							t.Errorf("%s: %d registrations refused, want %d", to.name, got, regs0+1)
						} else if c.regCode != 0 && evs[regs0].Code != uint8(c.regCode) {
							t.Errorf("%s: registration refused with code %d (%s), want %d", to.name, evs[regs0].Code, evs[regs0].Reason, c.regCode)
						}
					} else {
						n, evs := refused(t, to, c.refusal)
						if n != n0+1 || len(evs) == 0 || evs[len(evs)-1].NBMA != spokeNBMA(3) {
							t.Errorf("%s: %s refused %d times (was %d), events %+v", to.name, c.refusal, n, n0, evs)
						}
					}
					if diff := cmp.Diff(before, l.state(t)); diff != "" {
						t.Errorf("state changed (-before +after):\n%s", diff)
					}
					l.checkTraffic(t)
				})
			})
		}
	}
}

// TestForgedRequestHoldingTime: spoke3's own request through the hub,
// asking for a two-hour binding, gets spoke2 to bind spoke3 for this
// node's holding time at most.
func TestForgedRequestHoldingTime(t *testing.T) {
	for _, withCerts := range []bool{false, true} {
		t.Run(fmt.Sprint("certs=", withCerts), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				l := newForgeLab(t, withCerts)
				l.inet.Inject(spokeNBMA(3), hubNBMA(1), forge(t, resolutionRequest(spokeAddr(3), spokeAddr(2), 7200)))
				settle(time.Second)
				e, ok := l.s2.entry(t, hostPrefix(spokeAddr(3)))
				if !ok || e.NBMA != spokeNBMA(3) {
					t.Fatalf("spoke2's binding of spoke3 after its own request: %+v (%v)", e, ok)
				}
				if e.HoldingTime > 600 || e.Expires.Sub(time.Now()) > 600*time.Second {
					t.Errorf("binding held %d s (expires in %v), want at most spoke2's 600 s", e.HoldingTime, e.Expires.Sub(time.Now()))
				}
			})
		})
	}
}

// captureTo records the packets of a type sent to an NBMA address.
func captureTo(l *lab, typ wire.Type, to netip.Addr) func() []*wire.Packet {
	var mu sync.Mutex
	var got []*wire.Packet
	l.inet.SetFilter(func(from, dst netip.Addr, b []byte) bool {
		if dst == to {
			if p, err := wire.Decode(b); err == nil && p.Type == typ {
				mu.Lock()
				got = append(got, p)
				mu.Unlock()
			}
		}
		return true
	})
	return func() []*wire.Packet {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(got)
	}
}

// TestForgedReplyWithRequestID: an attacker that learnt spoke2's
// outstanding request ID answers it directly, naming spoke1's address
// for itself: refused (spoke2's binding of spoke1 stays at spoke1). With
// certificates the same answer passed on by a server that checks nothing
// (as FRR's and Cisco's hubs do) is refused too.
func TestForgedReplyWithRequestID(t *testing.T) {
	for _, withCerts := range []bool{false, true} {
		t.Run(fmt.Sprint("certs=", withCerts), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				l := newForgeLab(t, withCerts)
				reqs := captureTo(l.lab, wire.TypeResolutionRequest, hubNBMA(1))
				l.inet.Partition(hubNBMA(1), spokeNBMA(1)) // the request the hub forwards goes unanswered
				before := l.state(t)
				lastID := func() uint32 {
					var id uint32
					for _, p := range reqs() {
						if p.SrcProto == spokeAddr(2) && p.DstProto == lanHost(1) {
							id = p.RequestID
						}
					}
					if id == 0 {
						t.Fatal("spoke2 sent no resolution request for spoke1's LAN host")
					}
					return id
				}
				// Through the hub: a redirect, a resolution by spoke2.
				l.send(l.s2, lanHost(2), lanHost(1))
				settle(10 * time.Millisecond)
				n0, _ := refused(t, l.s2, RefusedReplyIdentity)
				// Direct, naming the hub in its transit record.
				l.inet.Inject(spokeNBMA(3), spokeNBMA(2), forge(t, resolutionReply(lastID(), spokeAddr(2), lanHost(1), 24, spokeAddr(1), spokeNBMA(3))))
				settle(10 * time.Millisecond)
				if n, _ := refused(t, l.s2, RefusedReplyIdentity); n != n0+1 {
					t.Errorf("direct answer naming spoke1: %d reply-identity refusals, want %d", n, n0+1)
				}
				if withCerts {
					settle(DefaultNegativeTTL + time.Second)
					l.send(l.s2, lanHost(2), lanHost(1))
					settle(10 * time.Millisecond)
					// From the hub's address, spoke3's claim.
					l.inet.Inject(hubNBMA(1), spokeNBMA(2), forge(t, resolutionReply(lastID(), spokeAddr(2), lanHost(1), 24, spokeAddr(1), spokeNBMA(3))))
					settle(10 * time.Millisecond)
					if n, _ := refused(t, l.s2, RefusedReplyIdentity); n != n0+2 {
						t.Errorf("answer through a server naming spoke1 at spoke3: %d reply-identity refusals, want %d", n, n0+2)
					}
				}
				if diff := cmp.Diff(before, l.state(t)); diff != "" {
					t.Errorf("state changed (-before +after):\n%s", diff)
				}
			})
		})
	}
}
