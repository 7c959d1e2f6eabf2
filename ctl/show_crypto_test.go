package ctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/ipsec"
)

// fakeCrypto is a node's IPsec with fixed SAs.
type fakeCrypto struct {
	sas     []ipsec.SA
	listErr error
	stats   ipsec.Stats
}

func (f *fakeCrypto) SAs(context.Context) ([]ipsec.SA, error) {
	if f.listErr != nil {
		return nil, f.listErr
	}
	return f.sas, nil
}

func (f *fakeCrypto) Stats() ipsec.Stats { return f.stats }

// testLog is what fakeCrypto's charon logs.
var testLog = []ipsec.LogLine{
	{Group: "NET", Thread: 9, Msg: "received packet: from 192.0.2.1[4500] to 198.51.100.1[4500] (80 bytes)"},
	{Group: "IKE", Thread: 11, Conn: "dmvpn-peer-198.51.100.17", IKEID: "5", Msg: "initiating IKE_SA dmvpn-peer-198.51.100.17[5] to 198.51.100.17"},
	{Group: "IKE", Thread: 12, Conn: "dmvpn-nhs-192.0.2.1", IKEID: "3", Level: 1, Msg: "sending DPD request"},
}

// Log sends testLog (the lines naming peer, when given) and then waits
// for the stream to end, as charon's log does.
func (f *fakeCrypto) Log(ctx context.Context, peer netip.Addr, fn func(ipsec.LogLine) error) error {
	for _, l := range testLog {
		if peer.IsValid() && !strings.Contains(l.Conn+" "+l.Msg, peer.String()+"[") && !strings.HasSuffix(l.Conn, "-"+peer.String()) {
			continue
		}
		l.Time = t0
		if err := fn(l); err != nil {
			return err
		}
	}
	<-ctx.Done()
	return nil
}

func (f *fakeCrypto) Clear(_ context.Context, peer netip.Addr) (int, error) {
	if f.listErr != nil {
		return 0, f.listErr
	}
	n := 0
	for _, sa := range f.sas {
		if sa.RemoteHost == peer {
			n++
		}
	}
	if n == 0 {
		return 0, fmt.Errorf("ipsec: no SA with %s", peer)
	}
	return n, nil
}

// cryptoDaemon is fakeDaemon with IPsec; a nil c is IPsec off.
type cryptoDaemon struct {
	fakeDaemon
	c control.Crypto
}

func (d cryptoDaemon) Crypto() control.Crypto { return d.c }

// testSAs are an established SA with the hub (NBMA 192.0.2.1) and one
// coming up with a spoke behind NAT, their times relative to now.
func testSAs(now time.Time) []ipsec.SA {
	return []ipsec.SA{
		{Conn: "dmvpn-nhs-192.0.2.1", IKEID: "3", State: "ESTABLISHED",
			LocalHost: netip.MustParseAddr("198.51.100.1"), RemoteHost: netip.MustParseAddr("192.0.2.1"), RemotePort: 500,
			LocalID: "CN=spoke1, O=dmvpn", RemoteID: "CN=hub1, O=dmvpn", Initiator: true,
			Established: now.Add(-time.Hour), RekeyIn: 3*time.Hour + 59*time.Minute,
			RemoteCertExpires: now.Add(200*24*time.Hour + time.Hour),
			Children: []ipsec.ChildSA{
				{Name: "gre", ID: "6", State: "REKEYED", Mode: "TRANSPORT", BytesIn: 500, PacketsIn: 5, BytesOut: 600, PacketsOut: 6,
					Installed: now.Add(-time.Hour), LocalTS: []string{"198.51.100.1/32[gre]"}, RemoteTS: []string{"192.0.2.1/32[gre]"}},
				{Name: "gre", ID: "7", State: "INSTALLED", Mode: "TRANSPORT", BytesIn: 10000, PacketsIn: 100, BytesOut: 12000, PacketsOut: 120,
					RekeyIn: 50 * time.Minute, Installed: now.Add(-59 * time.Minute),
					LocalTS: []string{"198.51.100.1/32[gre]"}, RemoteTS: []string{"192.0.2.1/32[gre]"}},
				{Name: "gre", ID: "8", State: "DELETING", Mode: "TRANSPORT", BytesIn: 1 << 20, PacketsIn: 1 << 10},
			}},
		{Conn: "dmvpn-peer-198.51.100.17", IKEID: "5", State: "CONNECTING",
			LocalHost: netip.MustParseAddr("198.51.100.1"), RemoteHost: netip.MustParseAddr("198.51.100.17"), RemotePort: 4500,
			NATRemote: true, LocalID: "CN=spoke1, O=dmvpn"},
	}
}

func testStats() ipsec.Stats {
	return ipsec.Stats{Mode: ipsec.ModeKernel, Connected: true, CharonPID: 4242, Restarts: 1,
		SAsByState:  map[string]int{"ESTABLISHED": 1, "CONNECTING": 1},
		Certificate: &ipsec.CertInfo{Subject: "CN=spoke1, O=dmvpn", Serial: "1a2b", NotAfter: time.Date(2026, 12, 10, 10, 0, 0, 0, time.UTC)}}
}

func TestPrintCrypto(t *testing.T) {
	r := control.CryptoResponse{Enabled: true, Stats: new(testStats()), SAs: testSAs(t0)}
	for _, tt := range []struct {
		name  string
		print func(*bytes.Buffer) error
		want  string
	}{
		{"sa", func(b *bytes.Buffer) error { return printCryptoSA(b, r, t0) }, `IPsec mode kernel, charon pid 4242 (connected), charon restarts 1
Local certificate CN=spoke1, O=dmvpn, serial 1a2b, expires 2026-12-10 (18 days left)

Peer NBMA Addr      State        Up Time   Child  Bytes In  Pkts In  Bytes Out  Pkts Out  Rekey     Role       Conn                      Cert Days  Remote Identity
192.0.2.1           ESTABLISHED  01:00:00  2      10500     105      12600      126       03:59:00  initiator  dmvpn-nhs-192.0.2.1       200        CN=hub1, O=dmvpn
198.51.100.17/4500  CONNECTING   never     0      0         0        0          0         -         responder  dmvpn-peer-198.51.100.17  -          -
`},
		{"ikev2", func(b *bytes.Buffer) error { return printCryptoIKE(b, r, t0) }, `IPsec mode kernel, charon pid 4242 (connected), charon restarts 1
Local certificate CN=spoke1, O=dmvpn, serial 1a2b, expires 2026-12-10 (18 days left)

 IPv4 Crypto IKEv2  SA

Tunnel-id Local                 Remote                Status       Role
3         198.51.100.1          192.0.2.1             ESTABLISHED  initiator
      Conn: dmvpn-nhs-192.0.2.1, Local ID: CN=spoke1, O=dmvpn, Remote ID: CN=hub1, O=dmvpn
      Up Time: 01:00:00, Rekey in: 03:59:00, CHILD_SAs: 2 installed of 3
5         198.51.100.1          198.51.100.17/4500    CONNECTING   responder
      Conn: dmvpn-peer-198.51.100.17, Local ID: CN=spoke1, O=dmvpn, Remote ID: -
      Up Time: never, Rekey in: -, CHILD_SAs: 0 installed of 0, NAT-T
`},
		{"ipsec", func(b *bytes.Buffer) error { return printCryptoIPsec(b, r, t0) }, `IPsec mode kernel, charon pid 4242 (connected), charon restarts 1
Local certificate CN=spoke1, O=dmvpn, serial 1a2b, expires 2026-12-10 (18 days left)

peer 192.0.2.1, conn dmvpn-nhs-192.0.2.1, IKE SA 3 ESTABLISHED
   local crypto endpt.: 198.51.100.1, remote crypto endpt.: 192.0.2.1
  CHILD_SA gre{6} REKEYED, mode TRANSPORT, installed 01:00:00
   local  ident: 198.51.100.1/32[gre]
   remote ident: 192.0.2.1/32[gre]
    #pkts encaps: 6, #bytes out: 600
    #pkts decaps: 5, #bytes in: 500
  CHILD_SA gre{7} INSTALLED, mode TRANSPORT, installed 00:59:00, rekey in 00:50:00
   local  ident: 198.51.100.1/32[gre]
   remote ident: 192.0.2.1/32[gre]
    #pkts encaps: 120, #bytes out: 12000
    #pkts decaps: 100, #bytes in: 10000
  CHILD_SA gre{8} DELETING, mode TRANSPORT
   local  ident: -
   remote ident: -
    #pkts encaps: 0, #bytes out: 0
    #pkts decaps: 1024, #bytes in: 1048576
`},
	} {
		var b bytes.Buffer
		if err := tt.print(&b); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(tt.want, b.String()); diff != "" {
			t.Errorf("show crypto %s (-want +got):\n%s", tt.name, diff)
		}
	}
}

func TestPrintDmvpnIPsec(t *testing.T) {
	v := DmvpnView{
		Node: "spoke1", Interface: "gre1", Type: "Spoke", Address: netip.MustParsePrefix("172.16.1.1/16"), Dataplane: "kernel",
		IPsec: &CryptoStatus{Enabled: true, Mode: ipsec.ModeKernel, Connected: true, CharonPID: 4242},
		Peers: []DmvpnPeer{
			{NBMA: netip.MustParseAddr("192.0.2.1"), Entries: []DmvpnEntry{
				{Tunnel: netip.MustParseAddr("172.16.0.1"), State: "UP", Since: t0.Add(-90 * time.Minute), Attrb: "S", Target: netip.MustParsePrefix("172.16.0.1/32")},
			}, IPsec: &DmvpnIPsec{State: "ESTABLISHED", Up: true, Identity: "CN=hub1, O=dmvpn"}},
			{NBMA: netip.MustParseAddr("198.51.100.17"), Entries: []DmvpnEntry{
				{Tunnel: netip.MustParseAddr("172.16.2.1"), State: "UP", Since: t0.Add(-(6*24 + 12) * time.Hour), Attrb: "DT1", Target: netip.MustParsePrefix("10.2.0.0/24")},
				{Tunnel: netip.MustParseAddr("172.16.2.1"), State: "NHRP", Since: t0.Add(-(3*7 + 5) * 24 * time.Hour), Attrb: "D", Target: netip.MustParsePrefix("172.16.2.1/32")},
			}, IPsec: &DmvpnIPsec{}},
		},
	}
	var b bytes.Buffer
	printDmvpn(&b, v, true, t0)
	want := dmvpnLegend + `Interface gre1 is up/up, Addr. is 172.16.1.1, VRF ""
   Tunnel Src./Dest. addr: -/Multipoint, Tunnel VRF ""
   Protocol/Transport: "multi-GRE/IP", Protect "ipsec"
   IPsec mode kernel, charon pid 4242 (connected)
   Data plane: kernel
   Node: spoke1
Type:Spoke, Total NBMA Peers (v4/v6): 2
# Ent  Peer NBMA Addr Peer Tunnel Add State  UpDn Tm Attrb    Target Network IKE SA      Remote Identity
----- --------------- --------------- ----- -------- ----- ----------------- ----------- ---------------
    1 192.0.2.1            172.16.0.1    UP 01:30:00     S     172.16.0.1/32 ESTABLISHED CN=hub1, O=dmvpn
    2 198.51.100.17        172.16.2.1    UP    6d12h   DT1       10.2.0.0/24 -           -
                           172.16.2.1  NHRP     3w5d     D     172.16.2.1/32
`
	if diff := cmp.Diff(want, b.String()); diff != "" {
		t.Errorf("show dmvpn detail with IPsec (-want +got):\n%s", diff)
	}
	// Without detail, IPsec changes nothing.
	b.Reset()
	printDmvpn(&b, v, false, t0)
	if strings.Contains(b.String(), "IKE") || strings.Contains(b.String(), "CN=hub1") {
		t.Errorf("show dmvpn without detail shows IPsec:\n%s", b.String())
	}
	// charon away: said in the header.
	v.IPsec.Error, v.IPsec.Connected = "ipsec: charon is not reachable", false
	b.Reset()
	printDmvpn(&b, v, true, t0)
	if !strings.Contains(b.String(), "   IPsec mode kernel, charon pid 4242 (not connected)\n   % charon is not reachable\n") {
		t.Errorf("show dmvpn detail, charon away:\n%s", b.String())
	}
}

func TestPeerIPsec(t *testing.T) {
	sas := testSAs(t0)
	hub, nat := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("198.51.100.17")
	// A second, older SA with the hub that is not up: the up one wins.
	sas = append([]ipsec.SA{{IKEID: "1", State: "DELETING", RemoteHost: hub, RemoteID: "CN=old"}}, sas...)
	for _, tt := range []struct {
		nbma     netip.Addr
		identity string
		want     DmvpnIPsec
	}{
		{hub, "", DmvpnIPsec{State: "ESTABLISHED", Up: true, Identity: "CN=hub1, O=dmvpn", Conn: "dmvpn-nhs-192.0.2.1", IKEID: "3"}},
		// No remote ID from charon yet: the identity the registration proved.
		{nat, "CN=spoke17", DmvpnIPsec{State: "CONNECTING", Identity: "CN=spoke17", Conn: "dmvpn-peer-198.51.100.17", IKEID: "5"}},
		{netip.MustParseAddr("203.0.113.9"), "CN=spoke9", DmvpnIPsec{Identity: "CN=spoke9"}},
		{netip.Addr{}, "", DmvpnIPsec{}},
	} {
		if diff := cmp.Diff(&tt.want, peerIPsec(sas, tt.nbma, tt.identity)); diff != "" {
			t.Errorf("peerIPsec(%v) (-want +got):\n%s", tt.nbma, diff)
		}
	}
}

// serve runs a control server for d and returns a runner of dmvpnctl
// command lines against it (stdout, stderr, exit status).
func serve(t *testing.T, d control.Daemon) func(line string) (string, string, int) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "d.sock")
	s := control.NewServer(d, nil)
	if err := s.ListenUnix(sock, control.OwnerOnly); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return func(line string) (string, string, int) {
		return runCtl(t, append([]string{"--socket", sock}, strings.Fields(line)...)...)
	}
}

func TestShowCrypto(t *testing.T) {
	run := serve(t, cryptoDaemon{c: &fakeCrypto{sas: testSAs(time.Now()), stats: testStats()}})
	ok := func(line string) string {
		t.Helper()
		out, errb, code := run(line)
		if code != 0 || errb != "" {
			t.Fatalf("%s: exit %d, stderr %q", line, code, errb)
		}
		return out
	}
	for line, wants := range map[string][]string{
		"sh cry sa": {"IPsec mode kernel, charon pid 4242 (connected), charon restarts 1\n",
			"Peer NBMA Addr      State        Up Time   Child  Bytes In  Pkts In  Bytes Out  Pkts Out  Rekey     Role       Conn                      Cert Days  Remote Identity\n",
			"192.0.2.1           ESTABLISHED  01:00:0", "  2      10500     105      12600      126       03:59:00  initiator  dmvpn-nhs-192.0.2.1       200        CN=hub1, O=dmvpn\n",
			"Local certificate CN=spoke1, O=dmvpn, serial 1a2b, expires 2026-12-10 (",
			"198.51.100.17/4500  CONNECTING   never     0"},
		"sh cr ik sa": {"3         198.51.100.1          192.0.2.1             ESTABLISHED  initiator\n", "CHILD_SAs: 2 installed of 3"},
		"sh cr ips sa": {"  CHILD_SA gre{7} INSTALLED, mode TRANSPORT, installed 00:59:0", "    #pkts encaps: 120, #bytes out: 12000\n",
			"   remote ident: 192.0.2.1/32[gre]\n"},
		"sh dm det": {"Protect \"ipsec\"", "IKE SA      Remote Identity\n",
			"    1 192.0.2.1            172.16.0.1    UP 01:00:0", "     172.16.0.1/32 ESTABLISHED CN=hub1, O=dmvpn\n",
			"       10.2.0.0/24 CONNECTING  -\n"},
		"cl cr sa 192.0.2.1": {"% 1 IKE SA with 192.0.2.1 cleared\n"},
	} {
		out := ok(line)
		for _, w := range wants {
			if !strings.Contains(out, w) {
				t.Errorf("%s: output lacks %q:\n%s", line, w, out)
			}
		}
	}
	// show dmvpn without detail is as without IPsec.
	if out := ok("sh dm"); strings.Contains(out, "IKE") {
		t.Errorf("show dmvpn shows IPsec without detail:\n%s", out)
	}

	var sa CryptoSAView
	decode(t, ok("sh cry sa json"), &sa)
	want := CryptoSAView{CryptoStatus: CryptoStatus{Enabled: true, Mode: ipsec.ModeKernel, Connected: true, CharonPID: 4242, Restarts: 1},
		SAs: []CryptoSA{
			{Peer: netip.MustParseAddr("192.0.2.1"), State: "ESTABLISHED", Identity: "CN=hub1, O=dmvpn", Children: 2,
				BytesIn: 10500, PacketsIn: 105, BytesOut: 12600, PacketsOut: 126, RekeySecs: 14340, Initiator: true, Conn: "dmvpn-nhs-192.0.2.1", IKEID: "3"},
			{Peer: netip.MustParseAddr("198.51.100.17"), Port: 4500, State: "CONNECTING", Conn: "dmvpn-peer-198.51.100.17", IKEID: "5"},
		}}
	want.SAs[0].Established = time.Now().Add(-time.Hour)
	// Days left: this node's certificate (a fixed date) and the hub's (in
	// 200 days).
	want.Certificate = testStats().Certificate
	want.DaysLeft = daysLeft(want.Certificate.NotAfter, time.Now())
	want.SAs[0].CertExpires, want.SAs[0].CertDaysLeft = time.Now().Add(200*24*time.Hour+time.Hour), new(200)
	if diff := cmp.Diff(want, sa, cmpopts.EquateComparable(netip.Addr{}), cmpopts.EquateApproxTime(5*time.Second)); diff != "" {
		t.Errorf("show crypto sa json (-want +got):\n%s", diff)
	}

	var ike CryptoIKEView
	decode(t, ok("sh cr ikev2 sa json"), &ike)
	if len(ike.SAs) != 2 || ike.SAs[0].RemoteID != "CN=hub1, O=dmvpn" || len(ike.SAs[0].Children) != 3 || ike.CharonPID != 4242 {
		t.Errorf("show crypto ikev2 sa json: %+v", ike)
	}
	var child CryptoIPsecView
	decode(t, ok("sh cr ipsec sa js"), &child)
	if len(child.Children) != 3 || child.Children[1].ID != "7" || child.Children[1].Peer != netip.MustParseAddr("192.0.2.1") ||
		child.Children[1].PacketsOut != 120 || child.Children[1].Conn != "dmvpn-nhs-192.0.2.1" || child.Children[1].IKEState != "ESTABLISHED" {
		t.Errorf("show crypto ipsec sa json: %+v", child)
	}
	var dm DmvpnView
	decode(t, ok("sh dmvpn detail json"), &dm)
	if dm.IPsec == nil || dm.IPsec.Mode != ipsec.ModeKernel || len(dm.Peers) != 2 ||
		dm.Peers[0].IPsec == nil || dm.Peers[0].IPsec.State != "ESTABLISHED" || !dm.Peers[0].IPsec.Up ||
		dm.Peers[1].IPsec == nil || dm.Peers[1].IPsec.State != "CONNECTING" {
		t.Errorf("show dmvpn detail json: %+v", dm)
	}
	// Plain show dmvpn json does not ask for IPsec.
	if out := ok("sh dmvpn json"); strings.Contains(out, "ipsec") {
		t.Errorf("show dmvpn json has ipsec:\n%s", out)
	}
}

func decode(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, s)
	}
}

func TestCryptoErrors(t *testing.T) {
	// IPsec off: the daemon has no Crypto at all, or a nil one.
	for _, d := range []control.Daemon{fakeDaemon{}, cryptoDaemon{}} {
		run := serve(t, d)
		out, errb, code := run("sh cr sa")
		if code != 0 || errb != "" || out != "% IPsec is not configured on this node\n" {
			t.Errorf("show crypto sa, IPsec off: exit %d, stdout %q, stderr %q", code, out, errb)
		}
		for _, line := range []string{"sh cr sa json", "sh cr ikev2 sa json", "sh cr ipsec sa json"} {
			out, _, code = run(line)
			var v map[string]any
			if err := json.Unmarshal([]byte(out), &v); err != nil || code != 0 || v["enabled"] != false {
				t.Errorf("%s, IPsec off: exit %d, %v, %s", line, code, err, out)
			}
		}
		out, errb, code = run("clear crypto sa 192.0.2.1")
		if code != 1 || out != "" || errb != "% IPsec is not configured on this node\n" {
			t.Errorf("clear crypto sa, IPsec off: exit %d, stdout %q, stderr %q", code, out, errb)
		}
		out, _, _ = run("sh dmvpn detail")
		if !strings.Contains(out, "Protect \"\"\n") || strings.Contains(out, "IKE SA") {
			t.Errorf("show dmvpn detail, IPsec off:\n%s", out)
		}
	}

	// charon away: the statistics and the reason, no failure.
	away := &fakeCrypto{listErr: errors.New("ipsec: charon is not reachable"),
		stats: ipsec.Stats{Mode: ipsec.ModeUserspace, Restarts: 2, SAsByState: map[string]int{}}}
	run := serve(t, cryptoDaemon{c: away})
	for _, line := range []string{"sh cr sa", "sh cr ikev2 sa", "sh cr ipsec sa"} {
		out, errb, code := run(line)
		want := "IPsec mode userspace, charon not connected, charon restarts 2\n% charon is not reachable\n"
		if code != 0 || errb != "" || out != want {
			t.Errorf("%s, charon away: exit %d, stdout %q, stderr %q; want stdout %q", line, code, out, errb, want)
		}
	}
	out, _, code := run("sh cr sa json")
	var v CryptoSAView
	if err := json.Unmarshal([]byte(out), &v); err != nil || code != 0 || v.Error != "ipsec: charon is not reachable" || !v.Enabled || v.SAs == nil {
		t.Errorf("show crypto sa json, charon away: exit %d, %v, %+v", code, err, v)
	}
	out, _, code = run("sh dmvpn detail")
	if code != 0 || !strings.Contains(out, "   % charon is not reachable\n") || !strings.Contains(out, "     172.16.0.1/32 -           -\n") {
		t.Errorf("show dmvpn detail, charon away: exit %d\n%s", code, out)
	}
	_, errb, code := run("clear crypto sa 192.0.2.1")
	if code != 1 || errb != "% ipsec: charon is not reachable\n" {
		t.Errorf("clear crypto sa, charon away: exit %d, stderr %q", code, errb)
	}
	// A reason other than the usual one is still said to be charon's.
	if got := charonError("ipsec: list-sas: context deadline exceeded"); got != "charon is not reachable: list-sas: context deadline exceeded" {
		t.Errorf("charonError = %q", got)
	}

	// clear: a peer without SA, not an address, no address.
	run = serve(t, cryptoDaemon{c: &fakeCrypto{sas: testSAs(time.Now()), stats: testStats()}})
	for line, want := range map[string]string{
		"clear crypto sa 203.0.113.9": "% ipsec: no SA with 203.0.113.9\n",
		"clear crypto sa bogus":       "% \"bogus\" is not an IP address\n",
		"clear crypto sa":             "% accepts 1 arg(s), received 0\n",
	} {
		out, errb, code := run(line)
		if code != 1 || out != "" || errb != want {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want %q", line, code, out, errb, want)
		}
	}
}

func TestDaysLeft(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want string
	}{{200*24*time.Hour + time.Minute, "200"}, {23 * time.Hour, "0"}, {-time.Minute, "expired"}, {-49 * time.Hour, "expired"}} {
		if got := days(daysLeft(t0.Add(c.d), t0)); got != c.want {
			t.Errorf("%v: %q, want %q", c.d, got, c.want)
		}
	}
	if days(nil) != "-" {
		t.Errorf("unknown: %q", days(nil))
	}
}

// lineWriter collects output and tells when it holds n lines.
type lineWriter struct {
	mu   sync.Mutex
	b    bytes.Buffer
	n    int
	done chan struct{}
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.b.Write(p)
	if strings.Count(w.b.String(), "\n") >= w.n && w.done != nil {
		close(w.done)
		w.done = nil
	}
	return len(p), nil
}

func (w *lineWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// TestDebugCrypto: debug crypto streams charon's log until interrupted,
// all of it or one peer's lines.
func TestDebugCrypto(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "d.sock")
	s := control.NewServer(cryptoDaemon{c: &fakeCrypto{stats: testStats()}}, nil)
	if err := s.ListenUnix(sock, control.OwnerOnly); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	debug := func(lines int, args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		w := &lineWriter{n: lines, done: make(chan struct{})}
		go func() {
			<-w.done
			cancel() // Ctrl-C once the lines are there
		}()
		var errb bytes.Buffer
		if code := Run(ctx, append([]string{"--socket", sock, "debug", "crypto"}, args...), strings.NewReader(""), w, &errb, nil); code != 0 {
			t.Errorf("debug crypto %v: exit %d, %s", args, code, errb.String())
		}
		if ctx.Err() == context.DeadlineExceeded {
			t.Errorf("debug crypto %v: %d lines not there in 10 s:\n%s", args, lines, w.String())
		}
		return w.String()
	}
	out := debug(4)
	tm := t0.Local().Format("15:04:05.000")
	want := "IKE debugging is on (charon's log, every peer); Ctrl-C to stop\n" +
		tm + " 09[NET] received packet: from 192.0.2.1[4500] to 198.51.100.1[4500] (80 bytes)\n" +
		tm + " 11[IKE] <dmvpn-peer-198.51.100.17|5> initiating IKE_SA dmvpn-peer-198.51.100.17[5] to 198.51.100.17\n" +
		tm + " 12[IKE] <dmvpn-nhs-192.0.2.1|3> sending DPD request\n"
	if diff := cmp.Diff(want, out); diff != "" {
		t.Errorf("debug crypto (-want +got):\n%s", diff)
	}
	out = debug(3, "peer", "192.0.2.1")
	if !strings.HasPrefix(out, "IKE debugging is on (charon's log, peer 192.0.2.1)") || strings.Contains(out, "198.51.100.17") ||
		!strings.Contains(out, "sending DPD request") || !strings.Contains(out, "received packet: from 192.0.2.1[4500]") {
		t.Errorf("debug crypto peer 192.0.2.1:\n%s", out)
	}
	out = debug(1, "peer", "198.51.100.17", "json")
	var l ipsec.LogLine
	if err := json.Unmarshal([]byte(out), &l); err != nil || l.IKEID != "5" || l.Conn != "dmvpn-peer-198.51.100.17" {
		t.Errorf("debug crypto peer json: %+v %v\n%s", l, err, out)
	}
	// A node without IPsec says so.
	sock2 := filepath.Join(t.TempDir(), "d2.sock")
	s2 := control.NewServer(cryptoDaemon{}, nil)
	if err := s2.ListenUnix(sock2, control.OwnerOnly); err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if _, errb, code := runCtl(t, "--socket", sock2, "debug", "crypto"); code != 1 || !strings.Contains(errb, "IPsec is not configured") {
		t.Errorf("without IPsec: exit %d, %q", code, errb)
	}
}

// TestPrintCryptoCRL: every show crypto command names the CRLs in force,
// and warns of one whose next update is past.
func TestPrintCryptoCRL(t *testing.T) {
	st := testStats()
	st.CRLs = []ipsec.CRLInfo{
		{File: "/etc/dmvpn/pki/ca.crl", Issuer: "C=FI, O=dmvpn, CN=CA", Number: "7", Revoked: 2,
			ThisUpdate: t0.Add(-48 * time.Hour), NextUpdate: t0.Add(-time.Hour)},
		{File: "/etc/dmvpn/pki/ca2.crl", Issuer: "C=FI, O=dmvpn, CN=CA2", ThisUpdate: t0.Add(-time.Hour), NextUpdate: t0.Add(time.Hour)},
	}
	r := control.CryptoResponse{Enabled: true, Stats: &st}
	var b bytes.Buffer
	if err := printCryptoSA(&b, r, t0); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"CRL in force: C=FI, O=dmvpn, CN=CA, number 7, issued " + t0.Add(-48*time.Hour).UTC().Format(time.RFC3339) +
			", next update " + t0.Add(-time.Hour).UTC().Format(time.RFC3339) + ", 2 revoked (/etc/dmvpn/pki/ca.crl)\n",
		"% Warning: the CRL of C=FI, O=dmvpn, CN=CA is stale: its next update was due " + t0.Add(-time.Hour).UTC().Format(time.RFC3339) + "\n",
		"CRL in force: C=FI, O=dmvpn, CN=CA2, issued",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("show crypto sa lacks %q:\n%s", want, b.String())
		}
	}
	if strings.Count(b.String(), "stale") != 1 {
		t.Errorf("a CRL that is not stale is said to be:\n%s", b.String())
	}
	v := cryptoSAView(r, t0)
	if len(v.CRLs) != 2 || !v.CRLs[0].Stale || v.CRLs[1].Stale {
		t.Errorf("show crypto sa json CRLs %+v", v.CRLs)
	}
}
