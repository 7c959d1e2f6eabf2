package nhrp

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/gre/gretest"
	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// FRR replay: the packets FRR's nhrpd 8.4 sent in the live interoperation
// test (integration.TestFRRInterop, kept in wire/testdata/captures), fed
// to engines set up with the same addresses, get the answers FRR needs.
// Where a reply must match a request ID our engine chose, FRR's packet is
// re-encoded with that ID and nothing else changed.
//
//	our hub 192.0.2.1, tunnel 10.0.0.1; FRR's hub in the FRR-hub capture
//	f1 / s1 198.51.100.1, tunnel 10.0.0.11, LAN 10.1.0.0/24
//	f2 / s2 198.51.100.65, tunnel 10.0.0.12, LAN 10.2.0.0/24
//	s3 / f3 198.51.100.129, tunnel 10.0.0.13, LAN 10.3.0.0/24

var (
	frrHubNBMA = netip.MustParseAddr("192.0.2.1")
	frrNBMA    = func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 51, 100, byte(1 + 64*(i-1))}) }
	frrTunnel  = func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, 0, byte(10 + i)}) }
	frrLAN     = func(i int) netip.Prefix { return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 0}), 24) }
)

// withRequestID returns FRR's packet with our request ID, re-encoded.
func withRequestID(t *testing.T, b []byte, id uint32) []byte {
	t.Helper()
	p := mustDecode(t, b)
	p.RequestID = id
	out, err := p.AppendBinary(nil)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// frrLab is a lab on the addresses of the live test, with a tap.
type frrLab struct {
	*lab
	tap *wireTap
}

func newFRRLab(t *testing.T) *frrLab {
	l := &frrLab{lab: newLab(t), tap: &wireTap{key: 42}}
	l.inet.SetFilter(l.tap.filter)
	return l
}

// hub adds our hub, routing each LAN i given to spoke i.
func (l *frrLab) hub(lans ...int) *node {
	r := &labRouter{routes: map[netip.Prefix]netip.Addr{}}
	for _, i := range lans {
		r.routes[frrLAN(i)] = frrTunnel(i)
	}
	cfg := hubConfig()
	cfg.HoldingTime = 60 * time.Second
	n := l.add("hub", hubAddr(1), frrHubNBMA, cfg, r)
	l.start(n)
	return n
}

// spoke adds our spoke i behind hub NBMA frrHubNBMA, whose tunnel address
// it learns (as FRR's "nhs dynamic" does) unless told.
func (l *frrLab) spoke(i int, hubProto netip.Addr) *node {
	cfg := spokeConfig()
	cfg.HoldingTime = 60 * time.Second
	cfg.NHS = []NHSConfig{{Proto: hubProto, NBMA: frrHubNBMA}}
	r := &labRouter{local: []netip.Prefix{frrLAN(i)}, routes: map[netip.Prefix]netip.Addr{lanAll: hubAddr(1)}}
	n := l.add("s"+string(rune('0'+i)), frrTunnel(i), frrNBMA(i), cfg, r)
	n.routes = []gre.Route{{Dst: lanAll, Via: hubAddr(1), Table: 254}}
	if err := n.dev.ReplaceRoute(context.Background(), n.routes[0]); err != nil {
		l.t.Fatal(err)
	}
	return n
}

// frr adds a device that sends FRR's packets from an NBMA address.
func (l *frrLab) frr(nbma netip.Addr) *gretest.Device {
	d, err := l.inet.NewDevice(gretest.Config{Name: "frr-" + nbma.String(), NBMA: nbma, Key: 42})
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { d.Close() })
	return d
}

// TestFRRRegistrationReplay: FRR's spokes register with our hub ("nhs
// dynamic": the request is addressed to the requester's own address, hop
// count 1, MTU 0; unique with holding time 60 s, no-unique with FRR's
// default 7200 s). Our replies name our own address as destination, as
// FRR's hub does (FRR takes the server's address from it), and echo the
// CIE as FRR's hub does.
func TestFRRRegistrationReplay(t *testing.T) {
	ours := ciscoPDUs(t, "frr__interop-ourhub")
	theirs := ciscoPDUs(t, "frr__interop-frrhub")
	frrReq, frrRep := mustDecode(t, theirs[3]), mustDecode(t, theirs[4]) // f3 and FRR's hub
	synctest.Test(t, func(t *testing.T) {
		l := newFRRLab(t)
		hub := l.hub()
		for i, want := range []struct {
			unique bool
			hold   int
		}{{true, 60}, {false, 7200}} {
			spoke := i + 1
			req := mustDecode(t, ours[i])
			if req.SrcProto != frrTunnel(spoke) || req.DstProto != req.SrcProto || req.HopCount != 1 || req.CIEs[0].MTU != 0 {
				t.Fatalf("capture: frame %d is not FRR's registration of %s", i+1, frrTunnel(spoke))
			}
			l.frr(frrNBMA(spoke)).WriteNHRP(ours[i], frrHubNBMA)
			settle(time.Second)
			got := l.tap.find(t, wire.TypeRegistrationReply, frrHubNBMA, frrNBMA(spoke))
			if got.RequestID != req.RequestID || got.SrcProto != req.SrcProto || got.SrcNBMA != req.SrcNBMA || got.Flags != req.Flags {
				t.Errorf("reply to %s: id %d %s %s flags %#x, request id %d %s %s flags %#x", req.SrcProto,
					got.RequestID, got.SrcNBMA, got.SrcProto, got.Flags, req.RequestID, req.SrcNBMA, req.SrcProto, req.Flags)
			}
			// FRR's hub answers with its own address; so do we.
			if frrReq.DstProto != frrReq.SrcProto || frrRep.DstProto != hubAddr(1) {
				t.Fatalf("capture: FRR's hub answered %s for a request to %s", frrRep.DstProto, frrReq.DstProto)
			}
			if got.DstProto != hubAddr(1) {
				t.Errorf("reply to %s names %s as destination, want the hub's %s (FRR's hub does)", req.SrcProto, got.DstProto, hubAddr(1))
			}
			c, w := got.CIEs[0], req.CIEs[0]
			if c.Code != wire.CIESuccess || c.PrefixLen != w.PrefixLen || c.HoldingTime != w.HoldingTime || c.MTU != w.MTU {
				t.Errorf("reply CIE %+v, request CIE %+v", c, w)
			}
			if fc, fw := frrRep.CIEs[0], frrReq.CIEs[0]; fc.PrefixLen != fw.PrefixLen || fc.HoldingTime != fw.HoldingTime {
				t.Fatalf("capture: FRR's hub does not echo the CIE: %+v for %+v", fc, fw)
			}
			e, ok := hub.entry(t, hostPrefix(frrTunnel(spoke)))
			if !ok || e.NBMA != frrNBMA(spoke) || e.HoldingTime != want.hold || slices.Contains(e.Flags, "unique") != want.unique {
				t.Errorf("binding of %s: %+v, want unique %v, holding time %d", frrTunnel(spoke), e, want.unique, want.hold)
			}
		}
		l.tap.tsharkClean(t, netip.Addr{})
	})
}

// TestFRRResolutionReplay: with our hub, an FRR spoke (f1) and our spoke
// s3. FRR's request for s3's LAN is forwarded to s3, which answers with
// the prefix and its own tunnel address as the CIE's client address, as
// FRR's responders do (FRR routes the prefix through that address). FRR's
// answer to s3's request — the CIE's client address is FRR's tunnel
// address, outside the prefix asked for, the reply travels back through
// the hub, MTU 0 — gives s3 a shortcut to f1's LAN through f1.
func TestFRRResolutionReplay(t *testing.T) {
	pdus := ciscoPDUs(t, "frr__interop-ourhub")
	reg, res, frrAns, frrReply := pdus[0], mustDecode(t, pdus[6]), mustDecode(t, pdus[5]), pdus[7]
	synctest.Test(t, func(t *testing.T) {
		l := newFRRLab(t)
		hub := l.hub(1, 3)
		s3 := l.spoke(3, hubAddr(1))
		l.start(s3)
		f1 := l.frr(frrNBMA(1))
		f1.WriteNHRP(reg, frrHubNBMA)
		settle(time.Second)
		if _, ok := hub.entry(t, hostPrefix(frrTunnel(1))); !ok {
			t.Fatal("FRR's registration was not accepted")
		}

		// FRR asks for s3's LAN host.
		if res.DstProto != netip.MustParseAddr("10.3.0.2") || res.SrcProto != frrTunnel(1) {
			t.Fatalf("capture: frame 7 is not f1's request for 10.3.0.2: %s → %s", res.SrcProto, res.DstProto)
		}
		f1.WriteNHRP(pdus[6], frrHubNBMA)
		settle(time.Second)
		got := l.tap.find(t, wire.TypeResolutionReply, frrNBMA(3), frrNBMA(1))
		c := got.CIEs[0]
		if got.RequestID != res.RequestID || c.Code != wire.CIESuccess || c.PrefixLen != 24 || c.NBMA != frrNBMA(3) || c.Proto != frrTunnel(3) {
			t.Errorf("s3's answer to FRR: id %d CIE %+v, want /24 at %s through %s", got.RequestID, c, frrNBMA(3), frrTunnel(3))
		}
		// FRR's own answer has the same shape: the responder's tunnel
		// address in the CIE, the prefix applying to the address asked for.
		if fc := frrAns.CIEs[0]; fc.Proto != responder(t, frrAns).Proto || fc.PrefixLen != 24 || netip.PrefixFrom(fc.Proto, 24).Contains(frrAns.DstProto) {
			t.Fatalf("capture: FRR's answer CIE %+v for %s", fc, frrAns.DstProto)
		}
		if r := responder(t, got); r.Proto != frrTunnel(3) || r.NBMA != frrNBMA(3) {
			t.Errorf("responder %+v", r)
		}

		// s3 asks for f1's LAN host: the hub redirects, s3 resolves
		// through the hub, which forwards the request to f1; FRR's answer
		// comes back through the hub.
		l.send(s3, netip.MustParseAddr("10.3.0.2"), netip.MustParseAddr("10.1.0.2"))
		settle(100 * time.Millisecond) // answered before s3 asks again (1 s), with another ID
		fwd := l.tap.find(t, wire.TypeResolutionRequest, frrHubNBMA, frrNBMA(1))
		if fwd.DstProto != netip.MustParseAddr("10.1.0.2") || fwd.SrcProto != frrTunnel(3) {
			t.Fatalf("request forwarded to FRR: %s → %s", fwd.SrcProto, fwd.DstProto)
		}
		f1.WriteNHRP(withRequestID(t, frrReply, fwd.RequestID), frrHubNBMA)
		settle(time.Second)
		e, ok := s3.entry(t, frrLAN(1))
		if !ok || e.Type != TypeShortcut || e.NextHop != frrTunnel(1) || e.NBMA != frrNBMA(1) {
			t.Errorf("s3's shortcut to f1's LAN: %+v (%v), want through %s at %s", e, ok, frrTunnel(1), frrNBMA(1))
		}
		if b, ok := s3.entry(t, hostPrefix(frrTunnel(1))); !ok || b.NBMA != frrNBMA(1) || slices.Contains(b.Flags, "nat") {
			t.Errorf("s3's binding of f1: %+v (%v): at %s, no NAT (the answer came through the hub)", b, ok, frrNBMA(1))
		}
		l.tap.tsharkClean(t, frrNBMA(1))
	})
}

// TestFRRHubReplay: our spoke s1 registers with FRR's hub, learning its
// tunnel address from the reply; FRR's redirect (a Traffic Indication
// addressed to the LAN host that sent the packet, hop count 1) makes it
// resolve, and the answer FRR's hub forwards (the CIE's client address is
// the responder's tunnel address) gives it a shortcut.
func TestFRRHubReplay(t *testing.T) {
	pdus := ciscoPDUs(t, "frr__interop-frrhub")
	regReply, ti, fwdReq, fwdReply := pdus[0], mustDecode(t, pdus[12]), pdus[8], pdus[17]
	synctest.Test(t, func(t *testing.T) {
		l := newFRRLab(t)
		frrHub := l.frr(frrHubNBMA)
		s1 := l.spoke(1, netip.Addr{})
		l.start(s1)
		settle(time.Second)
		reg := l.tap.find(t, wire.TypeRegistrationRequest, frrNBMA(1), frrHubNBMA)
		if reg.DstProto != frrTunnel(1) {
			t.Errorf("our registration to a server of unknown address is addressed to %s, want our own %s (FRR's too)", reg.DstProto, frrTunnel(1))
		}
		frrHub.WriteNHRP(withRequestID(t, regReply, reg.RequestID), frrNBMA(1))
		settle(time.Second)
		if st := s1.nhsState(t, frrHubNBMA); st.State != NHSUp || st.Proto != hubAddr(1) {
			t.Fatalf("FRR's hub: %+v, want up at %s", st, hubAddr(1))
		}
		if e, ok := s1.entry(t, hostPrefix(hubAddr(1))); !ok || e.Type != TypeNHS || e.NBMA != frrHubNBMA {
			t.Errorf("s1's entry of FRR's hub: %+v", e)
		}

		// FRR's redirect, about a packet from s1's LAN to f3's.
		if ti.DstProto != netip.MustParseAddr("10.1.0.2") || ti.HopCount != 1 {
			t.Fatalf("capture: frame 13 is not FRR's redirect to 10.1.0.2 (hop 1): %s hop %d", ti.DstProto, ti.HopCount)
		}
		frrHub.WriteNHRP(pdus[12], frrNBMA(1))
		settle(100 * time.Millisecond)
		res := l.tap.find(t, wire.TypeResolutionRequest, frrNBMA(1), frrHubNBMA)
		if res.DstProto != netip.MustParseAddr("10.3.0.2") {
			t.Fatalf("s1 resolves %s after FRR's redirect, want 10.3.0.2", res.DstProto)
		}
		frrHub.WriteNHRP(withRequestID(t, fwdReply, res.RequestID), frrNBMA(1))
		settle(time.Second)
		e, ok := s1.entry(t, frrLAN(3))
		if !ok || e.Type != TypeShortcut || e.NextHop != frrTunnel(3) || e.NBMA != frrNBMA(3) {
			t.Errorf("s1's shortcut to f3's LAN: %+v (%v), want through %s at %s", e, ok, frrTunnel(3), frrNBMA(3))
		}

		// A request FRR's hub forwards to s1 (hop count 254 after ours
		// 255) is answered straight to the requester.
		l.frr(frrNBMA(2))
		frrHub.WriteNHRP(fwdReq, frrNBMA(1))
		settle(time.Second)
		req := mustDecode(t, fwdReq)
		got := l.tap.find(t, wire.TypeResolutionReply, frrNBMA(1), frrNBMA(2))
		if c := got.CIEs[0]; got.RequestID != req.RequestID || c.PrefixLen != 24 || c.Proto != frrTunnel(1) || c.NBMA != frrNBMA(1) {
			t.Errorf("s1's answer to a request FRR forwarded: id %d CIE %+v", got.RequestID, c)
		}
		l.tap.tsharkClean(t, frrHubNBMA)
	})
}
