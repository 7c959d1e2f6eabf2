package integration

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/nhrp"
	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// The lab's addresses, as lab.Topologies' "alpine" has them.
var (
	labHub1NBMA   = netip.MustParseAddr("192.0.2.1")
	labSpoke1NBMA = netip.MustParseAddr("198.51.100.1")
	labSpoke2NBMA = netip.MustParseAddr("198.51.100.17")
	labSpoke3NBMA = netip.MustParseAddr("203.0.113.1") // its NAT's
	labHub1       = netip.MustParseAddr("172.16.0.1")
	labSpoke1     = netip.MustParseAddr("172.16.1.1")
	labSpoke2     = netip.MustParseAddr("172.16.2.1")
	labSpoke3     = netip.MustParseAddr("172.16.3.1")
)

const (
	labKey  = 0x12345678
	labAuth = "dmvpnlab"
)

// greSocketIn opens a raw GRE socket in a namespace: packets sent on it
// are routed as GRE (protocol 47) from that node, so with IPsec they
// leave through the node's SAs, as its own dmvpnd's would.
func greSocketIn(t *testing.T, ns string) int {
	t.Helper()
	type res struct {
		fd  int
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			ch <- res{-1, err}
			return
		}
		defer self.Close()
		f, err := os.Open("/run/netns/" + ns)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- res{-1, err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- res{-1, err}
			return
		}
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_GRE)
		if unix.Setns(int(self.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		ch <- res{fd, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatalf("raw GRE socket in %s: %v", ns, r.err)
	}
	t.Cleanup(func() { unix.Close(r.fd) })
	return r.fd
}

// sendForged sends an NHRP packet (with the lab's authentication added)
// in keyed GRE to an NBMA address.
func sendForged(t *testing.T, fd int, to netip.Addr, p *wire.Packet) {
	t.Helper()
	if p.HopCount == 0 {
		p.HopCount = nhrp.HopCount
	}
	p.Extensions = append(p.Extensions, wire.NewCiscoAuth([]byte(labAuth)))
	b, err := p.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	h := gre.Header{Protocol: gre.ProtoNHRP, HasKey: true, Key: labKey}
	pkt := make([]byte, h.Len(), h.Len()+len(b))
	h.Marshal(pkt)
	pkt = append(pkt, b...)
	if err := unix.Sendto(fd, pkt, 0, &unix.SockaddrInet4{Addr: to.As4()}); err != nil {
		t.Fatalf("sending the forged %v to %s: %v", p.Type, to, err)
	}
}

// labTraffic is GET /v1/traffic of a lab node.
func labTraffic(t *testing.T, l *labEnv, node string) nhrp.Traffic {
	t.Helper()
	var r control.TrafficResponse
	if err := json.Unmarshal([]byte(l.ctl(t, node, "show", "ip", "nhrp", "traffic", "json")), &r); err != nil {
		t.Fatal(err)
	}
	return r.NHRP
}

// labBindings is every binding of the nodes (type, address, NBMA, next
// hop), less those of the attacker's own address and of resolutions in
// progress or failed.
func labBindings(t *testing.T, l *labEnv, nodes ...string) []string {
	t.Helper()
	var out []string
	for _, node := range nodes {
		var r control.CacheResponse
		if err := json.Unmarshal([]byte(l.ctl(t, node, "show", "ip", "nhrp", "cache", "detail", "json")), &r); err != nil {
			t.Fatal(err)
		}
		for _, e := range r.Entries {
			if e.Type == nhrp.TypeIncomplete || e.Type == nhrp.TypeNegative || e.Proto.Contains(labSpoke3) || e.NBMA == labSpoke3NBMA ||
				e.Proto.Contains(netip.MustParseAddr("10.3.0.1")) {
				continue
			}
			out = append(out, fmt.Sprintf("%s %s %s nbma %s via %s", node, e.Type, e.Proto, e.NBMA, e.NextHop))
		}
	}
	slices.Sort(out)
	return out
}

// forgedLabCase is one forged packet of the lab test.
type forgedLabCase struct {
	name   string
	to     string     // the node it is for
	via    netip.Addr // the NBMA address it is sent to
	check  nhrp.Refusal
	packet func() *wire.Packet
}

func labRequest(src, dst netip.Addr, srcNBMA netip.Addr) *wire.Packet {
	return &wire.Packet{Type: wire.TypeResolutionRequest, RequestID: 0x5eed0001, SrcNBMA: srcNBMA,
		Flags:    wire.ResFlagQ | wire.ResFlagA | wire.ResFlagS | wire.ResFlagNAT,
		SrcProto: src, DstProto: dst, CIEs: []wire.CIE{{MTU: 1372, HoldingTime: 7200}},
		Extensions: []wire.Extension{{Type: wire.ExtResponderAddress, Compulsory: true},
			{Type: wire.ExtForwardTransit, Compulsory: true}, {Type: wire.ExtReverseTransit, Compulsory: true}}}
}

func labReply(requester, target, resp, nbma netip.Addr, bits uint8) *wire.Packet {
	return &wire.Packet{Type: wire.TypeResolutionReply, RequestID: 0x0bad0001, SrcNBMA: labSpoke2NBMA,
		Flags:    wire.ResFlagQ | wire.ResFlagA | wire.ResFlagD | wire.ResFlagU | wire.ResFlagS,
		SrcProto: requester, DstProto: target,
		CIEs: []wire.CIE{{PrefixLen: bits, HoldingTime: 7200, NBMA: nbma, Proto: resp}},
		Extensions: []wire.Extension{{Type: wire.ExtResponderAddress, Compulsory: true, CIEs: []wire.CIE{{NBMA: nbma, Proto: resp}}},
			{Type: wire.ExtForwardTransit, Compulsory: true, CIEs: []wire.CIE{{NBMA: labHub1NBMA, Proto: labHub1}}},
			{Type: wire.ExtReverseTransit, Compulsory: true}}}
}

var forgedLabCases = []forgedLabCase{
	{"resolution request to hub1 from spoke1's address for spoke2 (the reported hijack)", "hub1", labHub1NBMA, nhrp.RefusedRequestSource,
		func() *wire.Packet { return labRequest(labSpoke1, labSpoke2, labSpoke1NBMA) }},
	{"resolution request to hub1 with spoke1's NBMA address", "hub1", labHub1NBMA, nhrp.RefusedRequestSource,
		func() *wire.Packet { return labRequest(labSpoke3, labSpoke2, labSpoke1NBMA) }},
	{"purge of spoke1's registration at hub1", "hub1", labHub1NBMA, nhrp.RefusedPurge,
		func() *wire.Packet {
			return &wire.Packet{Type: wire.TypePurgeRequest, RequestID: 0x5eed0002, SrcNBMA: labSpoke1NBMA, SrcProto: labSpoke1, DstProto: labHub1,
				CIEs: []wire.CIE{{PrefixLen: 32, Proto: labSpoke1}}}
		}},
	{"resolution reply through hub1 to spoke2, answering nothing", "hub1", labHub1NBMA, nhrp.RefusedReplyUnmatched,
		func() *wire.Packet {
			return labReply(labSpoke2, netip.MustParseAddr("10.1.0.2"), labSpoke1, labSpoke3NBMA, 24)
		}},
	{"resolution request to spoke2 from spoke1's address", "spoke2", labSpoke2NBMA, nhrp.RefusedRequestSource,
		func() *wire.Packet { return labRequest(labSpoke1, labSpoke2, labSpoke1NBMA) }},
	{"resolution reply to spoke2 naming spoke1 at spoke3", "spoke2", labSpoke2NBMA, nhrp.RefusedReplyUnmatched,
		func() *wire.Packet {
			return labReply(labSpoke2, netip.MustParseAddr("10.1.0.2"), labSpoke1, labSpoke3NBMA, 24)
		}},
	{"purge at spoke2 of spoke1's LAN and address", "spoke2", labSpoke2NBMA, nhrp.RefusedPurge,
		func() *wire.Packet {
			return &wire.Packet{Type: wire.TypePurgeRequest, RequestID: 0x5eed0003, SrcNBMA: labSpoke1NBMA, SrcProto: labSpoke1, DstProto: labSpoke2,
				CIEs: []wire.CIE{{PrefixLen: 32, Proto: labSpoke1}, {PrefixLen: 24, Proto: netip.MustParseAddr("10.1.0.0")}}}
		}},
	{"purge at spoke2 of its own registration", "spoke2", labSpoke2NBMA, nhrp.RefusedPurge,
		func() *wire.Packet {
			return &wire.Packet{Type: wire.TypePurgeRequest, RequestID: 0x5eed0004, SrcNBMA: labHub1NBMA, SrcProto: labHub1, DstProto: labSpoke2,
				CIEs: []wire.CIE{{PrefixLen: 32, Proto: labSpoke2}}}
		}},
	{"traffic indication to spoke2", "spoke2", labSpoke2NBMA, nhrp.RefusedTrafficIndication,
		func() *wire.Packet {
			ip := []byte{0x45, 0, 0, 84, 0, 1, 0x40, 0, 63, 1, 0, 0, 10, 2, 0, 2, 10, 1, 0, 2}
			return &wire.Packet{Type: wire.TypeTrafficIndication, SrcNBMA: labHub1NBMA, SrcProto: labHub1, DstProto: labSpoke2,
				TrafficCode: wire.TrafficRedirect, Payload: ip}
		}},
	{"error indication to spoke2 about a request it never sent", "spoke2", labSpoke2NBMA, nhrp.RefusedErrorIndication,
		func() *wire.Packet {
			q, _ := (&wire.Packet{Type: wire.TypeRegistrationRequest, HopCount: 255, RequestID: 0x5eed0005, SrcNBMA: labSpoke2NBMA,
				SrcProto: labSpoke2, DstProto: labHub1, CIEs: []wire.CIE{{PrefixLen: 255, HoldingTime: 300}}}).MarshalBinary()
			return &wire.Packet{Type: wire.TypeErrorIndication, SrcNBMA: labHub1NBMA, SrcProto: labHub1, DstProto: labSpoke2,
				ErrorCode: wire.ErrorAuthenticationFailure, Payload: q}
		}},
	{"registration reply to spoke2", "spoke2", labSpoke2NBMA, nhrp.RefusedReplyUnmatched,
		func() *wire.Packet {
			return &wire.Packet{Type: wire.TypeRegistrationReply, RequestID: 0x5eed0006, Flags: wire.RegFlagU, SrcNBMA: labSpoke2NBMA,
				SrcProto: labSpoke2, DstProto: labHub1, CIEs: []wire.CIE{{Code: wire.CIEAdminProhibited, PrefixLen: 255}}}
		}},
}

// testLabForged: spoke3, registered with a valid certificate, forges each
// kind of NHRP packet with claims that are not its own and sends it
// through its own SAs — to hub1, and to spoke2 directly over the shortcut
// SA it has with it. Every packet is refused, counted (show ip nhrp
// traffic) and audited by the node it was for; no binding, shortcut or
// registration of another node changes; spoke1's and spoke2's LANs keep
// talking straight. Its own request through the hub, asking for a two-hour
// binding, is honoured for the lab's 300 s only.
func testLabForged(t *testing.T, l *labEnv) {
	st, err := loadState(l)
	if err != nil {
		t.Fatal(err)
	}
	ns := map[string]string{}
	for _, n := range st.Nodes {
		ns[n.Name] = n.NS
	}
	ping := func(from, to string) string {
		out, err := l.run(t, "exec", from, "--", "ping", "-c", "3", "-i", "0.2", "-W", "2", to)
		if err != nil {
			t.Fatalf("ping %s from %s: %v\n%s", to, from, err, out)
		}
		return out
	}
	// spoke1 ↔ spoke2 go straight; spoke3 gets a shortcut (and an SA) to
	// spoke2.
	ping("spoke1-h1", "10.2.0.2")
	waitFor(t, 10*time.Second, "spoke3's shortcut SA with spoke2", func() bool {
		ping("spoke3-h1", "10.2.0.2")
		for _, sa := range labCrypto(t, l, "spoke3").SAs {
			if sa.RemoteHost == labSpoke2NBMA && sa.Up() {
				return true
			}
		}
		return false
	})
	if out := ping("spoke1-h1", "10.2.0.2"); !strings.Contains(out, "ttl=62") {
		t.Fatalf("spoke1's LAN does not reach spoke2's straight:\n%s", out)
	}
	nodes := []string{"hub1", "hub2", "spoke1", "spoke2"}
	before := labBindings(t, l, nodes...)
	fd := greSocketIn(t, ns["spoke3"])

	for _, c := range forgedLabCases {
		n0 := labTraffic(t, l, c.to).Refused[c.check.String()]
		sendForged(t, fd, c.via, c.packet())
		waitFor(t, 5*time.Second, c.to+" refusing: "+c.name, func() bool {
			return labTraffic(t, l, c.to).Refused[c.check.String()] > n0
		})
		audited := false
		for _, a := range readAudit(t, filepath.Join(l.dir, c.to, "audit.jsonl")) {
			if a.Event == "packet refused" && a.Check == c.check.String() && a.NBMA == labSpoke3NBMA.String() {
				audited = true
			}
		}
		if !audited {
			t.Errorf("%s: no audit line of the %s refusal from %s", c.name, c.check, labSpoke3NBMA)
		}
		t.Logf("forged %s → %s refused it (%s)", c.name, c.to, c.check)
	}
	// Its own request through the hub, for a two-hour binding.
	sendForged(t, fd, labHub1NBMA, labRequest(labSpoke3, labSpoke2, netip.MustParseAddr("172.31.4.2")))
	waitFor(t, 10*time.Second, "spoke2 binding spoke3 after its own request", func() bool {
		e, ok := labCacheEntry(t, l, "spoke2", labSpoke3)
		return ok && e.Type == nhrp.TypeCached
	})
	if e, _ := labCacheEntry(t, l, "spoke2", labSpoke3); e.HoldingTime > 300 || time.Until(e.Expires) > 301*time.Second {
		t.Errorf("spoke2 holds spoke3's binding %d s (expires in %v), want at most its own 300 s", e.HoldingTime, time.Until(e.Expires))
	}

	if diff := slices.Compare(before, labBindings(t, l, nodes...)); diff != 0 {
		t.Errorf("bindings changed:\nbefore %s\nafter  %s", strings.Join(before, "\n       "), strings.Join(labBindings(t, l, nodes...), "\n       "))
	}
	if out := ping("spoke1-h1", "10.2.0.2"); !strings.Contains(out, "3 received") || !strings.Contains(out, "ttl=62") {
		t.Errorf("spoke1's LAN → spoke2's after the forgeries:\n%s", out)
	}
	if out := ping("spoke2-h1", "10.1.0.2"); !strings.Contains(out, "3 received") || !strings.Contains(out, "ttl=62") {
		t.Errorf("spoke2's LAN → spoke1's after the forgeries:\n%s", out)
	}
	for _, node := range []string{"hub1", "spoke2"} {
		if out := l.ctl(t, node, "show", "ip", "nhrp", "traffic"); !strings.Contains(out, "Refused (sender's identity does not prove it): ") || strings.Contains(out, "prove it): none") {
			t.Errorf("%s's show ip nhrp traffic shows no refusal:\n%s", node, out)
		} else {
			t.Logf("%s# show ip nhrp traffic\n%s", node, out)
		}
	}
}

// labCacheEntry returns a node's cache entry for an address (host entry).
func labCacheEntry(t *testing.T, l *labEnv, node string, a netip.Addr) (nhrp.CacheEntry, bool) {
	t.Helper()
	var r control.CacheResponse
	if err := json.Unmarshal([]byte(l.ctl(t, node, "show", "ip", "nhrp", "cache", "detail", "json")), &r); err != nil {
		t.Fatal(err)
	}
	for _, e := range r.Entries {
		if e.Proto == netip.PrefixFrom(a, 32) {
			return e, true
		}
	}
	return nhrp.CacheEntry{}, false
}
