package nhrp

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opendmvpn/dmvpn/gre/gretest"
	"github.com/opendmvpn/dmvpn/internal/tsharktest"
	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// Cisco replay: the real Cisco IOS packets of the captures, fed to engines
// configured to match them, get answers consistent with Cisco's own.

// ciscoPDUs reads the NHRP PDUs of a capture.
func ciscoPDUs(t *testing.T, name string) [][]byte {
	t.Helper()
	f, err := os.Open(filepath.Join("wire", "testdata", "captures", name+".pcap.nhrp-pdus.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out [][]byte
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 3 && fields[0] == "frame" {
			b, err := hex.DecodeString(fields[2])
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, b)
		}
	}
	return out
}

func mustDecode(t *testing.T, b []byte) *wire.Packet {
	t.Helper()
	p, err := wire.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// wireTap records every packet crossing the fake internet.
type wireTap struct {
	mu      sync.Mutex
	key     uint32
	packets []tsharktest.Frame
	// foreign are packets injected under another node's address (not
	// ours: tsharkClean leaves them out).
	foreign [][]byte
}

// inject delivers a foreign packet as if from sent it, and remembers it
// as not ours.
func (w *wireTap) inject(in *gretest.Internet, from, to netip.Addr, b []byte) {
	w.mu.Lock()
	w.foreign = append(w.foreign, b)
	w.mu.Unlock()
	in.Inject(from, to, b)
}

func (w *wireTap) filter(from, to netip.Addr, b []byte) bool {
	w.mu.Lock()
	w.packets = append(w.packets, tsharktest.Frame{Src: from, Dst: to, Key: w.key, NHRP: append([]byte(nil), b...)})
	w.mu.Unlock()
	return true
}

// find returns the first recorded packet of type t from one NBMA to
// another.
func (w *wireTap) find(t *testing.T, typ wire.Type, from, to netip.Addr) *wire.Packet {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, f := range w.packets {
		if f.Src == from && f.Dst == to {
			if p, err := wire.Decode(f.NHRP); err == nil && p.Type == typ {
				return p
			}
		}
	}
	t.Fatalf("no %v from %s to %s on the wire", typ, from, to)
	return nil
}

// tsharkClean writes everything the tap saw (less the injected Cisco
// packets, which are not ours) to a pcap and requires tshark to dissect
// every packet as well-formed NHRP.
func (w *wireTap) tsharkClean(t *testing.T, skipFrom netip.Addr) {
	t.Helper()
	w.mu.Lock()
	var ours []tsharktest.Frame
	for _, f := range w.packets {
		if f.Src != skipFrom && !slices.ContainsFunc(w.foreign, func(b []byte) bool { return bytes.Equal(b, f.NHRP) }) {
			ours = append(ours, f)
		}
	}
	w.mu.Unlock()
	path := filepath.Join(t.TempDir(), "replay.pcap")
	if err := tsharktest.WritePcap(path, ours); err != nil {
		t.Fatal(err)
	}
	probs, types, err := tsharktest.CheckNHRP(path, nil)
	if errors.Is(err, tsharktest.ErrNoTshark) {
		t.Log(err)
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range probs {
		t.Errorf("tshark, frame %s: %s", p.Frame, p.Detail)
	}
	if len(types) != len(ours) {
		t.Errorf("tshark saw %d NHRP packets, we sent %d", len(types), len(ours))
	}
}

// extLayout is the types and compulsory bits of a packet's extensions.
func extLayout(p *wire.Packet) string {
	var s []string
	for _, x := range p.Extensions {
		c := ""
		if x.Compulsory {
			c = "C"
		}
		s = append(s, fmt.Sprintf("%d%s", x.Type, c))
	}
	return strings.Join(s, ",")
}

// sameCIE compares what the replay checks of a CIE: code, prefix length,
// holding time and addresses.
func sameCIE(t *testing.T, what string, got, want wire.CIE) {
	t.Helper()
	if got.Code != want.Code || got.PrefixLen != want.PrefixLen || got.HoldingTime != want.HoldingTime ||
		got.NBMA != want.NBMA || got.Proto != want.Proto {
		t.Errorf("%s: got code %d /%d ht %d %s %s, Cisco sent code %d /%d ht %d %s %s", what,
			got.Code, got.PrefixLen, got.HoldingTime, got.NBMA, got.Proto,
			want.Code, want.PrefixLen, want.HoldingTime, want.NBMA, want.Proto)
	}
}

func responder(t *testing.T, p *wire.Packet) wire.CIE {
	t.Helper()
	x := p.Extension(wire.ExtResponderAddress)
	if x == nil || len(x.CIEs) != 1 {
		t.Fatalf("%v without a Responder Address CIE", p.Type)
	}
	return x.CIEs[0]
}

// TestCiscoRegistrationReplay: Cisco's Registration Requests (GRE key 2,
// authentication NHRPAUTH, unique + NAT flags, NAT extension) get replies
// like Cisco's hub sent.
func TestCiscoRegistrationReplay(t *testing.T) {
	pdus := ciscoPDUs(t, "tcpdump__NHRP_registration")
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		tap := &wireTap{key: 2}
		l.inet.SetFilter(tap.filter)
		hubNBMA, ciscoNBMA := netip.MustParseAddr("169.254.100.5"), netip.MustParseAddr("169.254.100.1")
		dev, err := l.inet.NewDevice(gretest.Config{Name: "hub", NBMA: hubNBMA, Prefix: netip.MustParsePrefix("155.1.0.5/24"), Key: 2})
		if err != nil {
			t.Fatal(err)
		}
		hub := &node{name: "hub", dev: dev, tun: dev, cfg: Config{Role: RoleHub, HoldingTime: 7200 * time.Second, AuthPassword: []byte("NHRPAUTH")}}
		hub.deps = Deps{Tunnel: dev, Observers: []Observer{hub}}
		t.Cleanup(func() { dev.Close() })
		l.start(hub)
		cisco, err := l.inet.NewDevice(gretest.Config{Name: "cisco", NBMA: ciscoNBMA, Key: 2})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cisco.Close() })

		for i := 0; i+1 < len(pdus); i += 2 {
			req, want := mustDecode(t, pdus[i]), mustDecode(t, pdus[i+1])
			cisco.WriteNHRP(pdus[i], hubNBMA)
			settle(time.Second)
			got := tap.find(t, wire.TypeRegistrationReply, hubNBMA, ciscoNBMA)
			if i > 0 {
				got = tap.findNth(t, wire.TypeRegistrationReply, hubNBMA, ciscoNBMA, i/2)
			}
			if got.RequestID != want.RequestID || got.Flags != want.Flags || got.SrcNBMA != want.SrcNBMA ||
				got.SrcProto != want.SrcProto || got.DstProto != want.DstProto {
				t.Errorf("reply %d header: id %d flags %#x %s %s→%s, Cisco: id %d flags %#x %s %s→%s", i/2+1,
					got.RequestID, got.Flags, got.SrcNBMA, got.SrcProto, got.DstProto,
					want.RequestID, want.Flags, want.SrcNBMA, want.SrcProto, want.DstProto)
			}
			sameCIE(t, "reply CIE", got.CIEs[0], want.CIEs[0])
			gr, wr := responder(t, got), responder(t, want)
			if gr.NBMA != wr.NBMA || gr.Proto != wr.Proto || gr.PrefixLen != wr.PrefixLen || gr.HoldingTime != wr.HoldingTime {
				t.Errorf("responder %+v, Cisco %+v", gr, wr)
			}
			if a, b := extLayout(got), extLayout(want); a != b {
				t.Errorf("extensions %s, Cisco %s", a, b)
			}
			if pw, _ := got.Auth(); string(pw) != "NHRPAUTH" {
				t.Errorf("authentication %q", pw)
			}
			if gn, wn := got.Extension(wire.ExtNATAddress), want.Extension(wire.ExtNATAddress); len(gn.CIEs) != len(wn.CIEs) || gn.CIEs[0].NBMA != wn.CIEs[0].NBMA {
				t.Errorf("NAT extension %+v, Cisco %+v", gn.CIEs, wn.CIEs)
			}
			_ = req
		}
		e, ok := hub.entry(t, netip.MustParsePrefix("155.1.0.1/32"))
		if !ok || e.NBMA != ciscoNBMA || e.HoldingTime != 7200 {
			t.Errorf("binding of the Cisco spoke: %+v", e)
		}
		tap.tsharkClean(t, ciscoNBMA)
	})
}

// findNth returns the nth (0-based) recorded packet of a type between two
// addresses.
func (w *wireTap) findNth(t *testing.T, typ wire.Type, from, to netip.Addr, n int) *wire.Packet {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, f := range w.packets {
		if f.Src == from && f.Dst == to {
			if p, err := wire.Decode(f.NHRP); err == nil && p.Type == typ {
				if n == 0 {
					return p
				}
				n--
			}
		}
	}
	t.Fatalf("no %v number %d from %s to %s", typ, n, from, to)
	return nil
}

// TestCiscoIOSRegistrationReplay: Cisco's 81-byte registration (no GRE
// key, prefix length 255, holding time 30, authentication CISCO) is
// accepted and answered with its own CIE values.
func TestCiscoIOSRegistrationReplay(t *testing.T) {
	pdu := ciscoPDUs(t, "tcpdump__ios_nhrp")[0]
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		tap := &wireTap{}
		l.inet.SetFilter(tap.filter)
		hubNBMA, ciscoNBMA := netip.MustParseAddr("10.0.12.1"), netip.MustParseAddr("10.0.12.2")
		dev, _ := l.inet.NewDevice(gretest.Config{Name: "hub", NBMA: hubNBMA, Prefix: netip.MustParsePrefix("192.168.0.1/24")})
		t.Cleanup(func() { dev.Close() })
		hub := &node{name: "hub", dev: dev, tun: dev, cfg: Config{Role: RoleHub, AuthPassword: []byte("CISCO")}}
		hub.deps = Deps{Tunnel: dev, Observers: []Observer{hub}}
		l.start(hub)
		cisco, _ := l.inet.NewDevice(gretest.Config{Name: "cisco", NBMA: ciscoNBMA})
		t.Cleanup(func() { cisco.Close() })
		cisco.WriteNHRP(pdu, hubNBMA)
		settle(time.Second)
		req := mustDecode(t, pdu)
		got := tap.find(t, wire.TypeRegistrationReply, hubNBMA, ciscoNBMA)
		want := req.CIEs[0]
		sameCIE(t, "reply CIE", got.CIEs[0], want)
		if got.RequestID != 5 || got.Flags != req.Flags {
			t.Errorf("reply id %d flags %#x", got.RequestID, got.Flags)
		}
		if r := responder(t, got); r.NBMA != hubNBMA || r.Proto != netip.MustParseAddr("192.168.0.1") {
			t.Errorf("responder %+v", r)
		}
		if e, ok := hub.entry(t, netip.MustParsePrefix("192.168.0.2/32")); !ok || e.HoldingTime != 30 {
			t.Errorf("binding %+v", e)
		}
		settle(31 * time.Second)
		if _, ok := hub.entry(t, netip.MustParsePrefix("192.168.0.2/32")); ok {
			t.Error("binding outlived its 30 s holding time")
		}
		tap.tsharkClean(t, ciscoNBMA)
	})
}

// TestCiscoTraceReplay replays the phase-3 trace with our engines in the
// three roles (hub 10.255.255.1, spokes .2 and .3; GRE key 1000,
// authentication "secret"): Cisco's Traffic Indication makes our spoke
// send a Resolution Request shaped like Cisco's; our hub forwards it like
// Cisco's hub did; our far spoke answers like Cisco's. Then Cisco's own
// request and forwarded request are fed to our hub and far spoke.
func TestCiscoTraceReplay(t *testing.T) {
	pdus := ciscoPDUs(t, "tcpdump__nhrp-trace")
	ti, res, fwd, rep := mustDecode(t, pdus[0]), mustDecode(t, pdus[1]), mustDecode(t, pdus[2]), mustDecode(t, pdus[3])
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		tap := &wireTap{key: 1000}
		l.inet.SetFilter(tap.filter)
		nb := func(i byte) netip.Addr { return netip.AddrFrom4([4]byte{192, 168, 200, i}) }
		pa := func(i byte) netip.Addr { return netip.AddrFrom4([4]byte{10, 255, 255, i}) }
		mk := func(name string, i byte, cfg Config) *node {
			dev, err := l.inet.NewDevice(gretest.Config{Name: name, NBMA: nb(i), Prefix: netip.PrefixFrom(pa(i), 24), Key: 1000})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { dev.Close() })
			cfg.AuthPassword, cfg.HoldingTime, cfg.Shortcut = []byte("secret"), 7200*time.Second, true
			n := &node{name: name, dev: dev, tun: dev, cfg: cfg}
			n.deps = Deps{Tunnel: dev, Observers: []Observer{n}}
			return n
		}
		nhs := []NHSConfig{{Proto: pa(1), NBMA: nb(1)}}
		hub := mk("hub", 1, Config{Role: RoleHub, Redirect: true})
		s2 := mk("s2", 2, Config{NHS: nhs})
		s3 := mk("s3", 3, Config{NHS: nhs})
		for _, n := range []*node{hub, s2, s3} {
			l.start(n)
		}
		settle(time.Second)

		// Cisco's Traffic Indication to .3, from its hub (.3 acts on
		// redirects from its servers only).
		tap.inject(l.inet, nb(1), nb(3), pdus[0])
		settle(time.Second)
		if dst := ti.Payload[16:20]; netip.AddrFrom4([4]byte(dst)) != pa(2) {
			t.Fatalf("the trace's redirect quotes a packet to %v", dst)
		}
		ourRes := tap.find(t, wire.TypeResolutionRequest, nb(3), nb(1))
		if ourRes.DstProto != res.DstProto || ourRes.SrcProto != res.SrcProto || ourRes.Flags != res.Flags || ourRes.HopCount != res.HopCount {
			t.Errorf("our request %s→%s flags %#x hop %d; Cisco %s→%s flags %#x hop %d",
				ourRes.SrcProto, ourRes.DstProto, ourRes.Flags, ourRes.HopCount, res.SrcProto, res.DstProto, res.Flags, res.HopCount)
		}
		if a, b := extLayout(ourRes), extLayout(res); a != b {
			t.Errorf("request extensions %s, Cisco %s", a, b)
		}
		if c, w := ourRes.CIEs[0], res.CIEs[0]; c.PrefixLen != w.PrefixLen || c.HoldingTime != w.HoldingTime {
			t.Errorf("request CIE %+v, Cisco %+v", c, w)
		}
		checkForwarded(t, tap.find(t, wire.TypeResolutionRequest, nb(1), nb(2)), fwd, ourRes.RequestID)
		checkReply(t, tap.find(t, wire.TypeResolutionReply, nb(2), nb(3)), rep, ourRes.RequestID)
		if e, ok := s3.entry(t, hostPrefix(pa(2))); !ok || e.NBMA != nb(2) {
			t.Errorf("spoke .3 binding for .2: %+v", e)
		}

		// Cisco's own request, to our hub, from .3's address (the hub
		// serves requests from the address their source registered
		// from): forwarded like Cisco's hub did, answered by our .2 like
		// Cisco's .2 did.
		tap.mu.Lock()
		tap.packets = nil
		tap.mu.Unlock()
		tap.inject(l.inet, nb(3), nb(1), pdus[1])
		settle(time.Second)
		checkForwarded(t, tap.find(t, wire.TypeResolutionRequest, nb(1), nb(2)), fwd, res.RequestID)
		checkReply(t, tap.find(t, wire.TypeResolutionReply, nb(2), nb(3)), rep, res.RequestID)

		// Cisco's hub's forwarded request, to our .2, from the hub.
		tap.inject(l.inet, nb(1), nb(2), pdus[2])
		settle(time.Second)
		checkReply(t, tap.findNth(t, wire.TypeResolutionReply, nb(2), nb(3), 1), rep, fwd.RequestID)
		tap.tsharkClean(t, nb(9))
	})
}

// checkForwarded compares our hub's forwarded request with Cisco's.
func checkForwarded(t *testing.T, got, want *wire.Packet, id uint32) {
	t.Helper()
	if got.HopCount != want.HopCount || got.RequestID != id || got.DstProto != want.DstProto || got.SrcProto != want.SrcProto || got.SrcNBMA != want.SrcNBMA {
		t.Errorf("forwarded: hop %d id %d %s %s→%s; Cisco hop %d %s %s→%s", got.HopCount, got.RequestID,
			got.SrcNBMA, got.SrcProto, got.DstProto, want.HopCount, want.SrcNBMA, want.SrcProto, want.DstProto)
	}
	gx, wx := got.Extension(wire.ExtForwardTransit), want.Extension(wire.ExtForwardTransit)
	if len(gx.CIEs) != 1 || gx.CIEs[0].NBMA != wx.CIEs[0].NBMA || gx.CIEs[0].Proto != wx.CIEs[0].Proto || gx.CIEs[0].HoldingTime != wx.CIEs[0].HoldingTime {
		t.Errorf("forward transit %+v, Cisco %+v", gx.CIEs, wx.CIEs)
	}
	if a, b := extLayout(got), extLayout(want); a != b {
		t.Errorf("forwarded extensions %s, Cisco %s", a, b)
	}
}

// checkReply compares our far spoke's reply with Cisco's.
func checkReply(t *testing.T, got, want *wire.Packet, id uint32) {
	t.Helper()
	if got.RequestID != id || got.Flags != want.Flags || got.SrcProto != want.SrcProto || got.DstProto != want.DstProto || got.SrcNBMA != want.SrcNBMA {
		t.Errorf("reply id %d flags %#x %s %s→%s; Cisco flags %#x %s %s→%s", got.RequestID, got.Flags,
			got.SrcNBMA, got.SrcProto, got.DstProto, want.Flags, want.SrcNBMA, want.SrcProto, want.DstProto)
	}
	sameCIE(t, "reply CIE", got.CIEs[0], want.CIEs[0])
	gr, wr := responder(t, got), responder(t, want)
	if gr.NBMA != wr.NBMA || gr.Proto != wr.Proto || gr.HoldingTime != wr.HoldingTime {
		t.Errorf("responder %+v, Cisco %+v", gr, wr)
	}
	if a, b := extLayout(got), extLayout(want); a != b {
		t.Errorf("reply extensions %s, Cisco %s", a, b)
	}
	if gx := got.Extension(wire.ExtForwardTransit); len(gx.CIEs) != 1 || gx.CIEs[0].Proto != netip.MustParseAddr("10.255.255.1") {
		t.Errorf("reply forward transit %+v", gx.CIEs)
	}
}
