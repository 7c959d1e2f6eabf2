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

	"github.com/opendmvpn/dmvpn/gre/gretest"
	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// NBMA addresses inside packets a hub passes on: a node with a valid
// certificate (or a registration) must not get another node's NBMA
// address into a reply or a request through the hub, so that nobody binds
// a tunnel address to it or brings up an SA toward it.

// peerLog is the lab's certificates as a PeerHandler that also records
// every peer brought up.
type peerLog struct {
	*certs
	mu sync.Mutex
	up []netip.Addr
}

func (p *peerLog) PeerUp(ctx context.Context, pe Peer) error {
	p.mu.Lock()
	p.up = append(p.up, pe.NBMA)
	p.mu.Unlock()
	return p.certs.PeerUp(ctx, pe)
}

func (p *peerLog) tried(nbma netip.Addr) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Contains(p.up, nbma)
}

// packetLog records every NHRP packet the fake Internet carries.
type packetLog struct {
	mu  sync.Mutex
	got []loggedPacket
}

type loggedPacket struct {
	from, to netip.Addr
	p        *wire.Packet
}

func logPackets(l *lab) *packetLog {
	pl := &packetLog{}
	l.inet.SetFilter(func(from, to netip.Addr, b []byte) bool {
		if p, err := wire.Decode(b); err == nil {
			pl.mu.Lock()
			pl.got = append(pl.got, loggedPacket{from, to, p})
			pl.mu.Unlock()
		}
		return true
	})
	return pl
}

// to returns the packets of a type sent to an NBMA address.
func (pl *packetLog) to(typ wire.Type, to netip.Addr) []*wire.Packet {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	var out []*wire.Packet
	for _, x := range pl.got {
		if x.to == to && x.p.Type == typ {
			out = append(out, x.p)
		}
	}
	return out
}

// nbmaLab is a hub and spokes 1-3 (with certificates: every node's
// PeerHandler logs the peers it brings up); spoke2 knows nothing of
// spoke1.
type nbmaLab struct {
	*lab
	hub, s1, s2 *node
	peers       map[string]*peerLog
	log         *packetLog
}

func newNBMALab(t *testing.T, withCerts bool, extra map[netip.Addr]cert) *nbmaLab {
	l := &nbmaLab{lab: newLab(t), peers: map[string]*peerLog{}}
	var c *certs
	if withCerts {
		c = labCerts()
		for a, x := range extra {
			c.m[a] = x
		}
	}
	l.hub = l.addHub(1, hubConfig(), 1, 2, 3)
	if withCerts {
		l.hub.deps.Authorizer, l.hub.deps.Verifier, l.hub.deps.Peers = c, c, c
	}
	l.start(l.hub)
	for i := 1; i <= 3; i++ {
		s := l.addSpoke(i, 1, spokeConfig(1))
		if withCerts {
			pl := &peerLog{certs: c}
			l.peers[s.name] = pl
			s.deps.Verifier, s.deps.Peers = c, pl
		}
		l.start(s)
	}
	l.s1, l.s2 = l.nodes["spoke1"], l.nodes["spoke2"]
	settle(time.Second)
	l.log = logPackets(l.lab)
	return l
}

// peersOf returns the NBMA addresses of a node's peers.
func peersOf(t *testing.T, n *node) []netip.Addr {
	t.Helper()
	var out []netip.Addr
	if err := n.eng.do(t.Context(), func() {
		for a := range n.eng.peers {
			out = append(out, a)
		}
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// told returns whom a node's own entry was told to.
func told(t *testing.T, n *node) map[netip.Addr]netip.Addr {
	t.Helper()
	out := map[netip.Addr]netip.Addr{}
	if err := n.eng.do(t.Context(), func() {
		if en := n.eng.cache.get(hostPrefix(n.eng.own)); en != nil {
			for a, x := range en.told {
				out[a] = x.proto
			}
		}
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestForgedReplyNBMAThroughHub: spoke3 answers, through the hub, spoke2's
// request for its LAN with the right responder address (its own) but
// spoke1's NBMA address — in the CIE, or in the NAT extension. The hub
// refuses it (counted and reported against spoke3, an Error Indication
// back): spoke2 binds nothing at spoke1's address and brings up no peer
// there. The same reply with spoke3's own address passes (the check would
// see a binding).
func TestForgedReplyNBMAThroughHub(t *testing.T) {
	forgeries := []struct {
		name string
		edit func(p *wire.Packet)
	}{
		{"cie", func(p *wire.Packet) {
			p.CIEs[0].NBMA = spokeNBMA(1)
			p.Extensions[0].CIEs[0].NBMA = spokeNBMA(1)
		}},
		{"nat", func(p *wire.Packet) {
			p.Extensions = append(p.Extensions, wire.Extension{Type: wire.ExtNATAddress,
				CIEs: []wire.CIE{{PrefixLen: 32, NBMA: spokeNBMA(1), Proto: spokeAddr(3)}}})
		}},
		{"none", func(p *wire.Packet) {}},
	}
	for _, withCerts := range []bool{false, true} {
		for _, f := range forgeries {
			t.Run(fmt.Sprintf("certs=%v/%s", withCerts, f.name), func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					l := newNBMALab(t, withCerts, nil)
					// The hub's forwarded request never reaches spoke3: the
					// test answers for it.
					l.inet.CutOneWay(hubNBMA(1), spokeNBMA(3))
					l.send(l.s2, lanHost(2), lanHost(3))
					settle(10 * time.Millisecond)
					var id uint32
					for _, p := range l.log.to(wire.TypeResolutionRequest, hubNBMA(1)) {
						if p.SrcProto == spokeAddr(2) && p.DstProto == lanHost(3) {
							id = p.RequestID
						}
					}
					if id == 0 {
						t.Fatal("spoke2 sent no request for spoke3's LAN")
					}
					rep := resolutionReply(id, spokeAddr(2), lanHost(3), 24, spokeAddr(3), spokeNBMA(3))
					f.edit(rep)
					l.inet.Inject(spokeNBMA(3), hubNBMA(1), forge(t, rep))
					settle(100 * time.Millisecond)

					n, evs := refused(t, l.hub, RefusedReplyIdentity)
					e, bound := l.s2.entry(t, hostPrefix(spokeAddr(3)))
					if f.name == "none" {
						if n != 0 || !bound || e.NBMA != spokeNBMA(3) {
							t.Fatalf("spoke3's honest reply: hub refused %d, spoke2's binding %+v (%v); want it passed and bound", n, e, bound)
						}
						return
					}
					if bound && e.NBMA == spokeNBMA(1) {
						t.Errorf("spoke2 binds spoke3 at spoke1's NBMA address: %+v", e)
					}
					if slices.Contains(peersOf(t, l.s2), spokeNBMA(1)) {
						t.Errorf("spoke2 has a peer at spoke1's NBMA address")
					}
					if withCerts && l.peers["spoke2"].tried(spokeNBMA(1)) {
						t.Errorf("spoke2 brought up an SA toward spoke1 for spoke3")
					}
					if n != 1 || len(evs) != 1 || evs[0].NBMA != spokeNBMA(3) {
						t.Errorf("hub refused %d (%+v), want 1 against spoke3", n, evs)
					}
					// The link to spoke3 is cut: the Error Indication is
					// counted as sent.
					ht, err := l.hub.eng.Traffic(t.Context())
					if err != nil {
						t.Fatal(err)
					}
					if got := ht.ErrorsSent[wire.ErrorInvalidResolutionReply.String()]; got != 1 {
						t.Errorf("hub sent %d Error Indications (invalid resolution reply), want 1", got)
					}
					if got := l.log.to(wire.TypeResolutionReply, spokeNBMA(2)); len(got) != 0 {
						t.Errorf("the hub passed the reply on to spoke2: %+v", got[0])
					}
				})
			})
		}
	}
}

// TestForgedRequestNBMAWithCert: a node with a valid certificate for its
// own tunnel address (10.0.0.99), registered nowhere, asks the hub about
// spoke2 naming spoke1's NBMA address as its own (as its source NBMA
// address, or in the NAT extension). The hub refuses it (counted and
// reported against the sender's address, not spoke1's, an Error
// Indication back to the sender): spoke2 replies to nobody, remembers
// nobody and brings up no peer at spoke1's address. Asked with its own
// address, the same request is answered (the check would see it).
func TestForgedRequestNBMAWithCert(t *testing.T) {
	atk, atkAddr := netip.MustParseAddr("203.0.113.66"), netip.MustParseAddr("10.0.0.99")
	cases := []struct {
		name string
		edit func(p *wire.Packet)
	}{
		{"src-nbma", func(p *wire.Packet) { p.SrcNBMA = spokeNBMA(1) }},
		{"nat", func(p *wire.Packet) {
			p.SrcNBMA = atk
			p.Extensions = append(p.Extensions, wire.Extension{Type: wire.ExtNATAddress,
				CIEs: []wire.CIE{{PrefixLen: 32, NBMA: spokeNBMA(1), Proto: atkAddr}}})
		}},
		{"own", func(p *wire.Packet) { p.SrcNBMA = atk }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				l := newNBMALab(t, true, map[netip.Addr]cert{atk: {gre: atkAddr}})
				dev, err := l.inet.NewDevice(gretest.Config{Name: "gre-atk", NBMA: atk, Prefix: netip.PrefixFrom(atkAddr, 24), Key: 42})
				if err != nil {
					t.Fatal(err)
				}
				defer dev.Close()
				// Its packet comes over its SA, up at the hub.
				if err := l.hub.eng.do(t.Context(), func() {
					l.hub.eng.whenUpOr(atk, "client", atkAddr, func() {}, nil)
				}); err != nil {
					t.Fatal(err)
				}
				settle(100 * time.Millisecond)
				p := resolutionRequest(atkAddr, spokeAddr(2), 7200)
				c.edit(p)
				l.inet.Inject(atk, hubNBMA(1), forge(t, p))
				settle(time.Second)

				n, evs := refused(t, l.hub, RefusedRequestSource)
				if c.name == "own" {
					if n != 0 || len(l.log.to(wire.TypeResolutionReply, atk)) == 0 {
						t.Fatalf("its own request: hub refused %d, replies to the sender %d; want it answered", n, len(l.log.to(wire.TypeResolutionReply, atk)))
					}
					if got := told(t, l.s2); got[atk] != atkAddr {
						t.Errorf("spoke2 told %v, want the proven requester", got)
					}
					return
				}
				if n != 1 || len(evs) != 1 || evs[0].NBMA != atk {
					t.Errorf("hub refused %d (%+v), want 1 against the sender %s", n, evs, atk)
				}
				eis := l.log.to(wire.TypeErrorIndication, atk)
				if len(eis) != 1 || eis[0].ErrorCode != wire.ErrorAuthenticationFailure {
					t.Errorf("Error Indications to the sender: %+v, want one (authentication failure)", eis)
				}
				if got := l.log.to(wire.TypeResolutionRequest, spokeNBMA(2)); len(got) != 0 {
					t.Errorf("the hub forwarded the request to spoke2")
				}
				if got := told(t, l.s2); len(got) != 0 {
					t.Errorf("spoke2 remembers requesters %v", got)
				}
				if slices.Contains(peersOf(t, l.s2), spokeNBMA(1)) || l.peers["spoke2"].tried(spokeNBMA(1)) {
					t.Errorf("spoke2 brought up a peer at spoke1's NBMA address")
				}
				if got := l.log.to(wire.TypeResolutionReply, spokeNBMA(1)); len(got) != 0 {
					t.Errorf("a reply went to spoke1's NBMA address")
				}
			})
		})
	}
}

// TestToldProvenBoundedPruned: a responder remembers a requester a server
// passed on only once the peer at the address it names proves to be it
// (a forged source NBMA address the server did not check leaves nothing);
// at most maxTold requesters per entry, the ones that go counted
// (told-full); each forgotten once the binding it got ran out.
func TestToldProvenBoundedPruned(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newNBMALab(t, true, nil)
		s2 := l.s2
		// A request from spoke1, passed on by spoke2's server (which
		// vouches for it), naming an address where no peer proves to be
		// spoke1: no reply there, nothing remembered.
		p := resolutionRequest(spokeAddr(1), spokeAddr(2), 600)
		p.SrcNBMA = netip.MustParseAddr("100.64.0.1")
		p.Extensions[1].CIEs = []wire.CIE{{NBMA: hubNBMA(1), Proto: hubAddr(1)}}
		l.inet.Inject(hubNBMA(1), spokeNBMA(2), forge(t, p))
		settle(5 * time.Second)
		if got := told(t, s2); len(got) != 0 {
			t.Errorf("spoke2 remembers %v for a requester nobody proved", got)
		}
		if got := l.log.to(wire.TypeResolutionReply, p.SrcNBMA); len(got) != 0 {
			t.Errorf("spoke2 replied to the unproven address")
		}
		if n, _ := refused(t, s2, RefusedRequester); n == 0 {
			t.Errorf("spoke2 counted no refused requester")
		}
		// The same from spoke1's own address: remembered.
		p.SrcNBMA, p.RequestID = spokeNBMA(1), 0x5eee
		l.inet.Inject(hubNBMA(1), spokeNBMA(2), forge(t, p))
		settle(5 * time.Second)
		if got := told(t, s2); got[spokeNBMA(1)] != spokeAddr(1) {
			t.Fatalf("spoke2 told %v, want spoke1 remembered", got)
		}
		if got := l.log.to(wire.TypeResolutionReply, spokeNBMA(1)); len(got) != 1 {
			t.Errorf("replies to spoke1: %d, want 1", len(got))
		}

		// Bounded.
		const over = 10
		if err := s2.eng.do(t.Context(), func() {
			en := s2.eng.cache.get(hostPrefix(spokeAddr(2)))
			for i := range maxTold + over {
				s2.eng.tell(en, netip.AddrFrom4([4]byte{100, 65, byte(i >> 8), byte(i)}), spokeAddr(1))
			}
		}); err != nil {
			t.Fatal(err)
		}
		if got := told(t, s2); len(got) != maxTold {
			t.Errorf("%d requesters remembered, want at most %d", len(got), maxTold)
		}
		tr, err := s2.eng.Traffic(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if got := tr.Limited[LimitTold.String()]; got != over+1 {
			t.Errorf("told-full counted %d, want %d", got, over+1)
		}
		// Pruned once the bindings given ran out (spoke2's holding time,
		// 600 s, and the 10 s check).
		settle(611 * time.Second)
		if got := told(t, s2); len(got) != 0 {
			t.Errorf("%d requesters still remembered after their bindings ran out", len(got))
		}
	})
}
