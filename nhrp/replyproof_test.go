package nhrp

import (
	"context"
	"net/netip"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// The certificates a direct-reply test runs with: none (no IPsec), the
// lab's (each spoke's OU=NET= its LAN), the lab's with spoke3's
// certificate carrying no OU=NET=, or the lab's with spoke3's OU=NET=
// naming the tunnel network as well as its LAN (a certificate issued
// carelessly).
type certMode int

const (
	noCerts certMode = iota
	certsWithNET
	certsWithoutNET
	certsWithTunnelNET
)

func (m certMode) String() string {
	return [...]string{"no-ipsec", "cert-with-NET", "cert-without-NET", "cert-with-tunnel-NET"}[m]
}

// replyLab is a hub and three spokes in which spoke2 has asked the hub
// for lanHost(3), and spoke3 — to which the hub forwarded the request,
// so it knows the request ID — answers by hand.
type replyLab struct {
	*lab
	hub, s2 *node
	id      uint32
}

// newReplyLab builds it. prepare runs on the started lab before spoke2
// asks (to give spoke2 bindings); cut keeps the hub's forwarded request
// (and anything else from the hub) from reaching spoke3.
func newReplyLab(t *testing.T, mode certMode, cut bool, prepare func(l *replyLab)) *replyLab {
	l := &replyLab{lab: newLab(t)}
	l.hub = l.addHub(1, hubConfig(), 1, 2, 3)
	var c *certs
	if mode != noCerts {
		c = labCerts()
		if mode == certsWithoutNET {
			c.m[spokeNBMA(3)] = cert{gre: spokeAddr(3)}
		}
		l.hub.deps.Authorizer, l.hub.deps.Verifier, l.hub.deps.Peers = c, c, c
	}
	l.start(l.hub)
	for i := 1; i <= 3; i++ {
		s := l.addSpoke(i, 1, spokeConfig(1))
		if c != nil {
			s.deps.Verifier, s.deps.Peers = c, c
		}
		l.start(s)
	}
	l.s2 = l.nodes["spoke2"]
	settle(time.Second)
	if prepare != nil {
		prepare(l)
	}
	reqs := captureTo(l.lab, wire.TypeResolutionRequest, hubNBMA(1))
	if cut {
		l.inet.CutOneWay(hubNBMA(1), spokeNBMA(3))
	}
	l.send(l.s2, lanHost(2), lanHost(3))
	settle(10 * time.Millisecond)
	for _, p := range reqs() {
		if p.SrcProto == spokeAddr(2) && p.DstProto == lanHost(3) {
			l.id = p.RequestID
		}
	}
	if l.id == 0 {
		t.Fatal("spoke2 sent no Resolution Request for lanHost(3)")
	}
	return l
}

// answer has spoke3 answer spoke2's request directly.
func (l *replyLab) answer(t *testing.T, bits uint8, resp netip.Addr) {
	t.Helper()
	l.inet.Inject(spokeNBMA(3), spokeNBMA(2), forge(t, resolutionReply(l.id, spokeAddr(2), lanHost(3), bits, resp, spokeNBMA(3))))
	settle(100 * time.Millisecond)
}

// resolveAt has n resolve a and waits for the answer.
func resolveAt(t *testing.T, n *node, a netip.Addr) {
	t.Helper()
	if err := n.eng.do(context.Background(), func() { n.eng.resolve(a, "test", nil) }); err != nil {
		t.Fatal(err)
	}
	settle(time.Second)
	if e, ok := n.entry(t, hostPrefix(a)); !ok || e.Type != TypeCached {
		t.Fatalf("%s did not resolve %s: %+v", n.name, a, e)
	}
}

// A direct answer with a real request ID naming another node as its
// responder binds nothing of that node's, with or without a binding of it
// already, and is refused as reply-identity.
func TestDirectReplyOtherResponder(t *testing.T) {
	for _, prior := range []bool{false, true} {
		t.Run(map[bool]string{false: "unbound", true: "bound"}[prior], func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				l := newReplyLab(t, noCerts, true, func(l *replyLab) {
					if prior {
						resolveAt(t, l.s2, spokeAddr(1))
					}
				})
				n0, _ := refused(t, l.s2, RefusedReplyIdentity)
				l.answer(t, 24, spokeAddr(1))
				settle(10 * time.Second) // the responder's own resolution, if any, ends
				if e, ok := l.s2.entry(t, hostPrefix(spokeAddr(1))); ok && e.NBMA == spokeNBMA(3) {
					t.Errorf("spoke2 binds spoke1's address at spoke3: %+v", e)
				}
				if prior {
					if e, ok := l.s2.entry(t, hostPrefix(spokeAddr(1))); !ok || e.NBMA != spokeNBMA(1) {
						t.Errorf("spoke2's binding of spoke1 changed: %+v", e)
					}
				}
				if nbma, _ := l.s2.dev.Forward(spokeAddr(1)); nbma == spokeNBMA(3) {
					t.Errorf("spoke2 → spoke1 goes to spoke3")
				}
				if _, ok := l.s2.entry(t, spokeLAN(3)); ok {
					t.Errorf("spoke2 installed the shortcut the refused answer gave")
				}
				if n, evs := refused(t, l.s2, RefusedReplyIdentity); n != n0+1 || len(evs) == 0 || evs[len(evs)-1].NBMA != spokeNBMA(3) {
					t.Errorf("reply-identity refusals %d → %d (%v), want one from spoke3", n0, n, evs)
				}
			})
		})
	}
}

// A responder address outside the tunnel network is refused, with
// certificates or without: no neighbour entry, no route for it.
func TestDirectReplyResponderOutsideTunnel(t *testing.T) {
	for _, mode := range []certMode{noCerts, certsWithNET} {
		t.Run(mode.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				l := newReplyLab(t, mode, true, nil)
				n0, _ := refused(t, l.s2, RefusedReplyIdentity)
				l.answer(t, 24, lanHost(1))
				if _, ok := l.s2.entry(t, hostPrefix(lanHost(1))); ok {
					t.Errorf("spoke2 binds %s", lanHost(1))
				}
				for _, n := range l.s2.neighbors(t) {
					if n == lanHost(1).String()+"→"+spokeNBMA(3).String() {
						t.Errorf("neighbour entry %s", n)
					}
				}
				if nbma, _ := l.s2.dev.Forward(lanHost(1)); nbma == spokeNBMA(3) {
					t.Errorf("spoke2 → %s goes to spoke3", lanHost(1))
				}
				if n, _ := refused(t, l.s2, RefusedReplyIdentity); n != n0+1 {
					t.Errorf("reply-identity refusals %d → %d, want one more", n0, n)
				}
			})
		})
	}
}

// Without IPsec the phase-3 shortcut is still built: spoke3's direct
// answer for its LAN is used once a resolution of spoke3's own address
// through the hub puts it at the NBMA address the answer came from.
func TestDirectReplyConfirmedThroughServer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		_, spokes := l.standard(3)
		s2 := spokes[1]
		settle(time.Second)
		l.send(s2, lanHost(2), lanHost(3))
		settle(time.Second)
		e, ok := s2.entry(t, spokeLAN(3))
		if !ok || e.Type != TypeShortcut || e.NextHop != spokeAddr(3) || e.NBMA != spokeNBMA(3) {
			t.Fatalf("spoke2's shortcut to spoke3's LAN: %+v (present %v)", e, ok)
		}
		if b, ok := s2.entry(t, hostPrefix(spokeAddr(3))); !ok || b.NBMA != spokeNBMA(3) {
			t.Errorf("spoke2's binding of spoke3: %+v", b)
		}
		if nbma, _ := s2.dev.Forward(lanHost(3)); nbma != spokeNBMA(3) {
			t.Errorf("spoke2 → spoke3's LAN goes to %s", nbma)
		}
		if n, evs := refused(t, s2, RefusedReplyIdentity); n != 0 {
			t.Errorf("refusals: %d %v", n, evs)
		}
	})
}

// A prefix broader than what proves it, or covering destinations spoke2
// reaches elsewhere, becomes the host route to the address asked for;
// a /24 that covers nothing else is installed as it is; a certificate with
// OU=NET= refuses a prefix outside them and proves one inside, covering or
// not.
func TestDirectReplyPrefixBounds(t *testing.T) {
	wide := netip.MustParsePrefix("10.8.0.0/13")
	for _, tc := range []struct {
		name   string
		mode   certMode
		bits   uint8
		cover  bool         // spoke2 holds a binding inside spoke3's LAN at spoke1
		want   netip.Prefix // the shortcut installed; invalid: none
		refuse bool
	}{
		{"wide/no-ipsec", noCerts, 13, false, hostPrefix(lanHost(3)), true},
		{"wide/cert-without-NET", certsWithoutNET, 13, false, hostPrefix(lanHost(3)), true},
		{"wide/cert-with-NET", certsWithNET, 13, false, netip.Prefix{}, true},
		{"lan/no-ipsec", noCerts, 24, false, spokeLAN(3), false},
		{"lan/cert-without-NET", certsWithoutNET, 24, false, spokeLAN(3), false},
		{"lan/cert-with-NET", certsWithNET, 24, false, spokeLAN(3), false},
		{"lan-covering/no-ipsec", noCerts, 24, true, hostPrefix(lanHost(3)), true},
		{"lan-covering/cert-without-NET", certsWithoutNET, 24, true, hostPrefix(lanHost(3)), true},
		{"lan-covering/cert-with-NET", certsWithNET, 24, true, spokeLAN(3), false}, // the certificate proves it
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				inside := netip.AddrFrom4([4]byte{10, 13, 0, 9})
				l := newReplyLab(t, tc.mode, true, func(l *replyLab) {
					resolveAt(t, l.s2, spokeAddr(3)) // spoke3 is proven at its NBMA address
					if tc.cover {
						err := l.s2.eng.do(context.Background(), func() {
							l.s2.eng.installBinding(hostPrefix(inside), spokeNBMA(1), spokeNBMA(1), hubNBMA(1), FlagRouter, time.Hour, 0)
						})
						if err != nil {
							t.Fatal(err)
						}
					}
				})
				n0, _ := refused(t, l.s2, RefusedReplyIdentity)
				l.answer(t, tc.bits, spokeAddr(3))
				var got []netip.Prefix
				for _, e := range l.s2.cache(t) {
					if e.Type == TypeShortcut {
						got = append(got, e.Proto)
						if e.NextHop != spokeAddr(3) || e.NBMA != spokeNBMA(3) {
							t.Errorf("shortcut %s via %s at %s", e.Proto, e.NextHop, e.NBMA)
						}
					}
				}
				if (tc.want.IsValid() && (len(got) != 1 || got[0] != tc.want)) || (!tc.want.IsValid() && len(got) != 0) {
					t.Errorf("shortcuts %v, want %v", got, tc.want)
				}
				if _, ok := l.s2.entry(t, wide); ok {
					t.Errorf("spoke2 installed %s", wide)
				}
				if nbma, _ := l.s2.dev.Forward(lanHost(1)); nbma == spokeNBMA(3) {
					t.Errorf("spoke2 → spoke1's LAN goes to spoke3")
				}
				if tc.cover {
					if e, ok := l.s2.entry(t, hostPrefix(inside)); !ok || e.NBMA != spokeNBMA(1) {
						t.Errorf("the covered binding changed: %+v", e)
					}
				}
				if n, _ := refused(t, l.s2, RefusedReplyIdentity); (n > n0) != tc.refuse {
					t.Errorf("reply-identity refusals %d → %d, want refused %v", n0, n, tc.refuse)
				}
			})
		})
	}
}
