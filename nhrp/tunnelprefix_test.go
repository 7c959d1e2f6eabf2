package nhrp

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opendmvpn/dmvpn/gre/gretest"
	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// Shortcut prefixes over the tunnel network. Tunnel addresses are bound
// one by one (a registration, or the OU=GRE= of a certificate): a
// responder that answers with a prefix around its own tunnel address
// (spoke3 answering for 10.0.0.13 with 10.0.0.12/30) would otherwise take
// the tunnel addresses of the others (spoke2's 10.0.0.12) with it — in a
// real cloud, with a tunnel network of /16, a /24 takes some 250 spokes'.

// prefixAttack is a hub and three spokes (with the certificates of mode)
// in which spoke1 resolves target through the hub and spoke3, to which
// the hub forwards the request, answers it by hand with a prefix of bits
// around target: directly to spoke1, or back through the hub. replies
// returns the Resolution Replies that reached spoke1. With v6 the tunnel
// network is fd00::/64 (tunnelAddr6) over the same NBMA addresses.
type prefixAttack struct {
	*lab
	hub, s1 *node
	addr    func(spoke int) netip.Addr // a spoke's tunnel address
	replies func() []*wire.Packet
}

// tunnelAddr6 is the IPv6 tunnel address of the lab's node n (the hub 1,
// spoke i 10+i): fd00::1, fd00::11 …
func tunnelAddr6(n int) netip.Addr {
	return netip.AddrFrom16([16]byte{0: 0xfd, 15: byte(n/10<<4 | n%10)})
}

// add6 adds a node of the IPv6 tunnel: no routes, the tunnel network
// connected.
func (l *lab) add6(name string, addr, nbma netip.Addr, cfg Config) *node {
	l.t.Helper()
	dev, err := l.inet.NewDevice(gretest.Config{Name: "gre-" + name, NBMA: nbma, Prefix: netip.PrefixFrom(addr, 64), Key: 42})
	if err != nil {
		l.t.Fatal(err)
	}
	r := &labRouter{routes: map[netip.Prefix]netip.Addr{}}
	n := &node{name: name, dev: dev, tun: dev, router: r, cfg: cfg}
	n.deps = Deps{Tunnel: dev, Router: r, Observers: []Observer{n}}
	l.nodes[name] = n
	l.t.Cleanup(func() { dev.Close() })
	return n
}

func newPrefixAttack(t *testing.T, mode certMode, direct, v6 bool, target netip.Addr, bits uint8) *prefixAttack {
	t.Helper()
	l := &prefixAttack{lab: newLab(t), addr: spokeAddr}
	if v6 {
		l.addr = func(i int) netip.Addr { return tunnelAddr6(10 + i) }
		l.hub = l.add6("hub1", tunnelAddr6(1), hubNBMA(1), hubConfig())
	} else {
		l.hub = l.addHub(1, hubConfig(), 1, 2, 3)
	}
	var c *certs
	if mode != noCerts {
		c = labCerts()
		switch mode {
		case certsWithoutNET:
			c.m[spokeNBMA(3)] = cert{gre: spokeAddr(3)}
		case certsWithTunnelNET:
			c.m[spokeNBMA(3)] = cert{gre: spokeAddr(3), nets: []netip.Prefix{spokeLAN(3), tunnelNet}}
		}
		l.hub.deps.Authorizer, l.hub.deps.Verifier, l.hub.deps.Peers = c, c, c
	}
	l.start(l.hub)
	for i := 1; i <= 3; i++ {
		var n *node
		if v6 {
			cfg := spokeConfig()
			cfg.NHS = []NHSConfig{{Proto: tunnelAddr6(1), NBMA: hubNBMA(1)}}
			n = l.add6(fmt.Sprintf("spoke%d", i), l.addr(i), spokeNBMA(i), cfg)
		} else {
			n = l.addSpoke(i, 1, spokeConfig(1))
		}
		if c != nil {
			n.deps.Verifier, n.deps.Peers = c, c
		}
		l.start(n)
	}
	l.s1 = l.nodes["spoke1"]
	settle(time.Second)
	var mu sync.Mutex
	var id uint32
	var replies []*wire.Packet
	l.inet.SetFilter(func(from, to netip.Addr, b []byte) bool {
		p, err := wire.Decode(b)
		if err != nil {
			return true
		}
		mu.Lock()
		defer mu.Unlock()
		switch {
		case to == spokeNBMA(1) && p.Type == wire.TypeResolutionReply && p.DstProto == target:
			replies = append(replies, p)
		case to == spokeNBMA(3) && p.Type == wire.TypeResolutionRequest && p.SrcProto == l.addr(1) && p.DstProto == target:
			id = p.RequestID
			return false // spoke3 answers by hand
		}
		return true
	})
	l.replies = func() []*wire.Packet {
		mu.Lock()
		defer mu.Unlock()
		return append([]*wire.Packet(nil), replies...)
	}
	go l.s1.eng.do(context.Background(), func() { l.s1.eng.resolve(target, "test", nil) })
	settle(10 * time.Millisecond)
	mu.Lock()
	rid := id
	mu.Unlock()
	if rid == 0 {
		t.Fatalf("spoke1's request for %s did not reach spoke3", target)
	}
	rep := resolutionReply(rid, l.addr(1), target, bits, l.addr(3), spokeNBMA(3))
	rep.SrcNBMA = spokeNBMA(1)
	if v6 {
		rep.Extensions[1].CIEs[0].Proto = tunnelAddr6(1)
	}
	if direct {
		l.inet.Inject(spokeNBMA(3), spokeNBMA(1), forge(t, rep))
	} else {
		rep.Extensions[1].CIEs = nil // no Forward Transit record: it goes back the way it came
		l.inet.Inject(spokeNBMA(3), hubNBMA(1), forge(t, rep))
	}
	return l
}

// narrowings returns how many reply-identity refusals of n say a prefix
// was narrowed because it overlaps the tunnel network, from spoke3.
func narrowings(t *testing.T, n *node) int {
	t.Helper()
	_, evs := refused(t, n, RefusedReplyIdentity)
	k := 0
	for _, e := range evs {
		if e.NBMA == spokeNBMA(3) && strings.Contains(e.Reason, "overlaps the tunnel network") {
			k++
		}
	}
	return k
}

// TestShortcutPrefixOverTunnel: spoke3 answers spoke1's resolution of
// its own tunnel address with 10.0.0.12/30, which covers spoke2's, without
// IPsec, with a certificate that has no OU=NET= and with one whose OU=NET=
// names the tunnel network, directly and through the hub. spoke1 binds 10.0.0.13/32 alone (no /30): traffic to spoke2's
// tunnel address never goes to spoke3 and, once resolved, goes to spoke2.
// The node that narrowed the prefix counts it as a reply-identity refusal
// (spoke1 for a direct answer; the hub for one it passes on, as a /32).
// An answer for spoke3's LAN (outside the tunnel network) is still bound
// as the /24 it gives, and nothing is counted.
func TestShortcutPrefixOverTunnel(t *testing.T) {
	for _, mode := range []certMode{noCerts, certsWithoutNET, certsWithTunnelNET} {
		for _, direct := range []bool{false, true} {
			name := fmt.Sprintf("%s/%s", mode, map[bool]string{false: "through-hub", true: "direct"}[direct])
			t.Run(name+"/tunnel-30", func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					l := newPrefixAttack(t, mode, direct, false, spokeAddr(3), 30)
					l.checkNarrowed(t, direct)
				})
			})
			t.Run(name+"/lan-24", func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					l := newPrefixAttack(t, mode, direct, false, lanHost(3), 24)
					settle(2 * time.Second)
					e, ok := l.s1.entry(t, spokeLAN(3))
					if !ok || e.Type != TypeShortcut || e.NextHop != spokeAddr(3) || e.NBMA != spokeNBMA(3) {
						t.Errorf("spoke1's shortcut to spoke3's LAN: %+v (present %v)", e, ok)
					}
					if nbma, err := l.s1.dev.Forward(netip.AddrFrom4([4]byte{10, 13, 0, 77})); nbma != spokeNBMA(3) {
						t.Errorf("spoke1 → spoke3's LAN goes to %v (%v)", nbma, err)
					}
					for _, n := range []*node{l.s1, l.hub} {
						if k, _ := refused(t, n, RefusedReplyIdentity); k != 0 {
							_, evs := refused(t, n, RefusedReplyIdentity)
							t.Errorf("%s: %d reply-identity refusals %+v", n.name, k, evs)
						}
					}
				})
			})
		}
	}
}

// checkNarrowed checks the outcome of spoke3's answer for its own tunnel
// address with a prefix that covers spoke2's: spoke1 binds spoke3's
// address alone, its traffic to spoke2's address never goes to spoke3 and
// (once resolved through the hub) goes to spoke2, and the node that
// narrowed the prefix (spoke1 for a direct answer, else the hub, which
// passes it on as a host answer) counted it once.
func (l *prefixAttack) checkNarrowed(t *testing.T, direct bool) {
	t.Helper()
	settle(2 * time.Second)
	var bound []string
	for _, e := range l.s1.cache(t) {
		if e.NBMA == spokeNBMA(3) || e.NextHop == l.addr(3) {
			bound = append(bound, fmt.Sprintf("%s %s", e.Type, e.Proto))
		}
	}
	if want := []string{"cached " + hostPrefix(l.addr(3)).String()}; fmt.Sprint(bound) != fmt.Sprint(want) {
		t.Errorf("spoke1 binds at spoke3: %v, want %v", bound, want)
	}
	if nbma, _ := l.s1.dev.Forward(l.addr(2)); nbma == spokeNBMA(3) {
		t.Fatalf("spoke1 → spoke2's tunnel address %s goes to spoke3", l.addr(2))
	}
	settle(time.Second) // the miss is resolved through the hub
	if nbma, err := l.s1.dev.Forward(l.addr(2)); nbma != spokeNBMA(2) {
		t.Errorf("spoke1 → spoke2 goes to %v (%v), want spoke2", nbma, err)
	}
	counter, other := l.s1, l.hub
	if !direct {
		counter, other = l.hub, l.s1
		replies := l.replies()
		if len(replies) == 0 {
			t.Errorf("the hub passed no answer on")
		}
		for _, p := range replies {
			if int(p.CIEs[0].PrefixLen) != l.addr(3).BitLen() {
				t.Errorf("the hub passed the answer on with prefix length %d, want %d", p.CIEs[0].PrefixLen, l.addr(3).BitLen())
			}
		}
	}
	if n := narrowings(t, counter); n != 1 {
		t.Errorf("%s counted %d narrowings, want 1", counter.name, n)
	}
	if n := narrowings(t, other); n != 0 {
		t.Errorf("%s counted %d narrowings, want 0", other.name, n)
	}
}

// TestShortcutPrefixOverTunnel6 is TestShortcutPrefixOverTunnel's attack
// on an IPv6 tunnel network (fd00::/64), without IPsec: spoke3 answers for
// fd00::13 with fd00::12/127, which covers spoke2's fd00::12 (a
// /126 would cover spoke1's own address, refused before anything else).
func TestShortcutPrefixOverTunnel6(t *testing.T) {
	for _, direct := range []bool{false, true} {
		t.Run(map[bool]string{false: "through-hub", true: "direct"}[direct], func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				l := newPrefixAttack(t, noCerts, direct, true, tunnelAddr6(13), 127)
				l.checkNarrowed(t, direct)
			})
		})
	}
}

// TestTunnelPrefix decides prefixes against a tunnel network of IPv4 and
// of IPv6, and without a known one (a host prefix): a prefix that
// overlaps it becomes the host asked for when that is the responder's own
// address, and is refused when the host is another tunnel address.
func TestTunnelPrefix(t *testing.T) {
	pf, a := netip.MustParsePrefix, netip.MustParseAddr
	for _, tc := range []struct {
		name           string
		own            string
		target, resp   string
		prefix         string
		want           string // the prefix bound; "" refused
		narrowed       bool
		refuseContains string
	}{
		{"v4 /30 around the responder", "10.0.0.11/16", "10.0.0.13", "10.0.0.13", "10.0.0.12/30", "10.0.0.13/32", true, ""},
		{"v4 /24 around the responder", "10.0.0.11/16", "10.0.9.13", "10.0.9.13", "10.0.9.0/24", "10.0.9.13/32", true, ""},
		{"v4 tunnel host of another node", "10.0.0.11/16", "10.0.9.12", "10.0.9.13", "10.0.9.0/24", "", false, "not the responder's"},
		{"v4 LAN prefix", "10.0.0.11/16", "10.13.0.5", "10.0.0.13", "10.13.0.0/24", "10.13.0.0/24", false, ""},
		{"v4 host shortcut", "10.0.0.11/16", "10.13.0.5", "10.0.0.13", "10.13.0.5/32", "10.13.0.5/32", false, ""},
		{"v4 prefix next to the tunnel network", "10.0.0.11/16", "10.1.0.5", "10.0.0.13", "10.1.0.0/24", "10.1.0.0/24", false, ""},
		{"v6 /126 around the responder", "fd00::11/64", "fd00::13", "fd00::13", "fd00::10/126", "fd00::13/128", true, ""},
		{"v6 /96 around the responder", "fd00::11/64", "fd00::1:13", "fd00::1:13", "fd00::/96", "fd00::1:13/128", true, ""},
		{"v6 tunnel host of another node", "fd00::11/64", "fd00::12", "fd00::13", "fd00::10/126", "", false, "not the responder's"},
		{"v6 LAN /64", "fd00::11/64", "fd00:13::5", "fd00::13", "fd00:13::/64", "fd00:13::/64", false, ""},
		{"v6 over a v4 tunnel", "10.0.0.11/16", "fd00:13::5", "10.0.0.13", "fd00:13::/64", "fd00:13::/64", false, ""},
		{"unknown tunnel network", "10.0.0.11/32", "10.13.0.5", "10.0.0.13", "10.13.0.0/24", "10.13.0.5/32", true, ""},
		{"unknown tunnel network, other family", "10.0.0.11/32", "fd00:13::5", "10.0.0.13", "fd00:13::/64", "fd00:13::/64", false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			own := pf(tc.own)
			e := &Engine{ownPfx: own, own: own.Addr()}
			got, why, refuse := e.tunnelPrefix(a(tc.target), pf(tc.prefix), a(tc.resp))
			switch {
			case tc.want == "":
				if refuse == "" || !strings.Contains(refuse, tc.refuseContains) {
					t.Errorf("got %s (%q), want refused (%q)", got, refuse, tc.refuseContains)
				}
			case refuse != "" || got != pf(tc.want):
				t.Errorf("got %s refused %q, want %s", got, refuse, tc.want)
			case (why != "") != tc.narrowed:
				t.Errorf("narrowed %q, want narrowed %v", why, tc.narrowed)
			}
		})
	}
}
