package ctl

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/nhrp"
)

var t0 = time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)

func TestPrintDmvpn(t *testing.T) {
	v := DmvpnView{
		Node: "spoke1", Interface: "gre1", Type: "Spoke", Address: netip.MustParsePrefix("172.16.1.1/16"),
		Peers: []DmvpnPeer{
			{NBMA: netip.MustParseAddr("192.0.2.1"), Entries: []DmvpnEntry{
				{Tunnel: netip.MustParseAddr("172.16.0.1"), State: "UP", Since: t0.Add(-90 * time.Minute), Attrb: "S", Target: netip.MustParsePrefix("172.16.0.1/32")},
			}},
			{NBMA: netip.MustParseAddr("198.51.100.17"), Entries: []DmvpnEntry{
				{Tunnel: netip.MustParseAddr("172.16.2.1"), State: "UP", Since: t0.Add(-(6*24 + 12) * time.Hour), Attrb: "DT1", Target: netip.MustParsePrefix("10.2.0.0/24")},
				{Tunnel: netip.MustParseAddr("172.16.2.1"), State: "NHRP", Since: t0.Add(-(3*7 + 5) * 24 * time.Hour), Attrb: "D", Target: netip.MustParsePrefix("172.16.2.1/32")},
			}},
		},
	}
	var b bytes.Buffer
	printDmvpn(&b, v, false, t0)
	want := dmvpnLegend + `Interface: gre1, IPv4 NHRP Details
Type:Spoke, NHRP Peers:2,

 # Ent  Peer NBMA Addr Peer Tunnel Add State  UpDn Tm Attrb
 ----- --------------- --------------- ----- -------- -----
     1 192.0.2.1            172.16.0.1    UP 01:30:00     S
     2 198.51.100.17        172.16.2.1    UP    6d12h   DT1
                            172.16.2.1  NHRP     3w5d     D
`
	if diff := cmp.Diff(want, b.String()); diff != "" {
		t.Errorf("show dmvpn (-want +got):\n%s", diff)
	}
	b.Reset()
	printDmvpn(&b, v, true, t0)
	for _, line := range []string{
		"# Ent  Peer NBMA Addr Peer Tunnel Add State  UpDn Tm Attrb    Target Network",
		"    2 198.51.100.17        172.16.2.1    UP    6d12h   DT1       10.2.0.0/24",
		"Type:Spoke, Total NBMA Peers (v4/v6): 2",
	} {
		if !strings.Contains(b.String(), line+"\n") {
			t.Errorf("show dmvpn detail lacks %q:\n%s", line, b.String())
		}
	}
}

// TestPrintDmvpnWarnings: the daemon's warnings (IPsec off) come first,
// one line each, before Cisco's legend.
func TestPrintDmvpnWarnings(t *testing.T) {
	v := DmvpnView{Node: "spoke1", Interface: "gre1", Type: "Spoke", Warnings: []string{"IPsec is off (ipsec: off): NHRP and GRE travel in clear"}}
	var b bytes.Buffer
	printDmvpn(&b, v, false, t0)
	want := "% Warning: IPsec is off (ipsec: off): NHRP and GRE travel in clear\n" + dmvpnLegend
	if !strings.HasPrefix(b.String(), want) {
		t.Errorf("show dmvpn does not start with the warning:\n%s", b.String())
	}
}

func TestUpDown(t *testing.T) {
	for _, tt := range []struct {
		d    time.Duration
		want string
	}{
		{0, "00:00:00"}, {59 * time.Minute, "00:59:00"}, {23*time.Hour + 59*time.Minute + 59*time.Second, "23:59:59"},
		{24 * time.Hour, "1d00h"}, {6*24*time.Hour + 23*time.Hour, "6d23h"}, {7 * 24 * time.Hour, "1w0d"}, {30 * 24 * time.Hour, "4w2d"},
	} {
		if got := upDown(t0.Add(-tt.d), t0); got != tt.want {
			t.Errorf("upDown(%v) = %q, want %q", tt.d, got, tt.want)
		}
	}
	if got := upDown(time.Time{}, t0); got != "never" {
		t.Errorf("upDown(zero) = %q", got)
	}
}

// fakeEngine answers with fixed snapshots.
type fakeEngine struct{}

func (fakeEngine) Status(context.Context) (nhrp.Status, error) {
	return nhrp.Status{Role: "spoke", Interface: "gre1", Address: netip.MustParsePrefix("172.16.1.1/16"), NBMA: netip.MustParseAddr("198.51.100.1"), HoldingTime: 300}, nil
}

func (fakeEngine) Cache(context.Context) ([]nhrp.CacheEntry, error) {
	now := time.Now()
	return []nhrp.CacheEntry{
		{Type: nhrp.TypeShortcut, Proto: netip.MustParsePrefix("10.2.0.0/24"), NBMA: netip.MustParseAddr("198.51.100.17"), NextHop: netip.MustParseAddr("172.16.2.1"),
			Flags: []string{"router", "rib"}, Created: now.Add(-time.Minute), Expires: now.Add(4 * time.Minute), HoldingTime: 300, MTU: 1472, PeerState: "up"},
		{Type: nhrp.TypeNHS, Proto: netip.MustParsePrefix("172.16.0.1/32"), NBMA: netip.MustParseAddr("192.0.2.1"), Created: now.Add(-time.Hour), PeerState: "up"},
		{Type: nhrp.TypeLocal, Proto: netip.MustParsePrefix("172.16.1.1/32"), Created: now.Add(-time.Hour)},
	}, nil
}

func (fakeEngine) NHS(context.Context) ([]nhrp.NHSStatus, error) {
	return []nhrp.NHSStatus{{Proto: netip.MustParseAddr("172.16.0.1"), NBMA: netip.MustParseAddr("192.0.2.1"), Priority: 1, State: nhrp.NHSUp, Since: time.Now().Add(-time.Hour), Sent: 3, Replies: 3}}, nil
}

func (fakeEngine) Peers(context.Context) ([]nhrp.PeerStatus, error) {
	return []nhrp.PeerStatus{
		{NBMA: netip.MustParseAddr("192.0.2.1"), Role: "nhs", State: "up", Since: time.Now().Add(-time.Hour), Users: 1},
		{NBMA: netip.MustParseAddr("198.51.100.17"), Role: "shortcut", State: "up", Since: time.Now().Add(-time.Minute), Users: 1},
	}, nil
}

func (fakeEngine) Traffic(context.Context) (nhrp.Traffic, error) {
	return nhrp.Traffic{Sent: map[string]uint64{"Registration Request": 3, "Resolution Request": 1}, Received: map[string]uint64{"Registration Reply": 3},
		ErrorsSent: map[string]uint64{}, ErrorsReceived: map[string]uint64{"authentication failure": 2},
		Dropped: map[string]uint64{"malformed": 1}, Suppressed: map[string]uint64{}, Limited: map[string]uint64{"rate-limited": 5}, MaxSend: 1000}, nil
}

func (fakeEngine) Clear(_ context.Context, r nhrp.ClearRequest) (int, error) {
	if r.Shortcut {
		return 1, nil
	}
	return 0, nil
}

// CacheEach hands the fixed cache out in chunks of one entry.
func (f fakeEngine) CacheEach(ctx context.Context, fn func([]nhrp.CacheEntry) error) error {
	all, _ := f.Cache(ctx)
	for i := range all {
		if err := fn(all[i : i+1]); err != nil {
			return err
		}
	}
	return nil
}

// PeersEach hands the fixed peers out in chunks of one.
func (f fakeEngine) PeersEach(ctx context.Context, fn func([]nhrp.PeerStatus) error) error {
	all, _ := f.Peers(ctx)
	for i := range all {
		if err := fn(all[i : i+1]); err != nil {
			return err
		}
	}
	return nil
}

func (fakeEngine) Subscribe(int, bool) (<-chan nhrp.Event, func()) {
	ch := make(chan nhrp.Event, 1)
	ch <- nhrp.Event{Kind: nhrp.EventShortcutUp, Proto: netip.MustParsePrefix("10.2.0.0/24"), NextHop: netip.MustParseAddr("172.16.2.1")}
	return ch, func() {} // open until the stream is interrupted
}

type fakeDaemon struct{}

func (fakeDaemon) Engine() control.Engine { return fakeEngine{} }
func (fakeDaemon) Info() control.Info {
	return control.Info{Node: "spoke1", Role: "spoke", Dataplane: "userspace", DataplaneReason: "data plane: userspace", Started: time.Now().Add(-time.Hour), ConfigFile: "/etc/dmvpn/dmvpnd.yaml"}
}
func (fakeDaemon) Counters() (gre.Counters, bool) {
	return gre.Counters{TxPackets: 5, RxPackets: 4, Drops: map[string]uint64{"bad_key": 1}}, true
}
func (fakeDaemon) RunningConfig() []byte { return []byte("node: spoke1\nrole: spoke\n") }
func (fakeDaemon) Reload(_ context.Context, dryRun bool) ([]string, error) {
	return []string{"holding time 10m0s → 5m0s"}, nil
}

// TestShowCommands runs every command against a control server answering
// fixed snapshots: the text has what it must, every json form parses.
func TestShowCommands(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "d.sock")
	s := control.NewServer(fakeDaemon{}, nil)
	if err := s.ListenUnix(sock, control.OwnerOnly); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	run := func(line string) string {
		t.Helper()
		out, errb, code := runCtl(t, append([]string{"--socket", sock}, strings.Fields(line)...)...)
		if code != 0 || errb != "" {
			t.Fatalf("%s: exit %d, stderr %q", line, code, errb)
		}
		return out
	}
	texts := map[string][]string{
		"sh dmvpn":                {"Type:Spoke, NHRP Peers:2,", "198.51.100.17        172.16.2.1    UP 00:01:0", "192.0.2.1            172.16.0.1    UP 01:00:0"},
		"sh dmvpn detail":         {"IPv4 NHS: 172.16.0.1 RE priority = 1 cluster = 0", "10.2.0.0/24"},
		"sh ip nhrp":              {"10.2.0.0/24 via 172.16.2.1, gre1 created 00:01:0", "  Type: shortcut, Flags: router rib", "  NBMA address: 198.51.100.17", "  Type: local, Flags: none"},
		"sh ip nhrp cache detail": {"  Holding time: 300s, MTU: 1472", "  Peer state: up"},
		"sh ip nhrp shortcut":     {"10.2.0.0/24 via 172.16.2.1"},
		"sh ip nhrp nhs":          {"172.16.0.1      RE  NBMA Address: 192.0.2.1 priority = 1 cluster = 0"},
		"sh ip nhrp nhs detail":   {"req-sent 3  req-failed 0  repl-recv 3"},
		"sh ip nhrp traffic":      {"gre1: Max-send limit:1000Pkts/1Sec, Usage:0%", "   Sent: Total 4", "         1 Resolution Request  0 Resolution Reply  3 Registration Request", "Error Indications received: 2 authentication failure", "Dropped on receipt: 1 malformed", "Refused or evicted by limits: 5 rate-limited", "data-plane drops: 1 bad_key"},
		"sh running-config":       {"node: spoke1\nrole: spoke\n"},
		"sh version":              {"Node spoke1 (spoke), up 01:00:0", "configuration /etc/dmvpn/dmvpnd.yaml"},
		"clear ip nhrp shortcut":  {"% 1 entries cleared"},
	}
	for line, wants := range texts {
		out := run(line)
		for _, w := range wants {
			if !strings.Contains(out, w) {
				t.Errorf("%s: output lacks %q:\n%s", line, w, out)
			}
		}
	}
	for _, line := range []string{"sh dmvpn json", "sh dmvpn detail json", "sh ip nhrp json", "sh ip nhrp cache json", "sh ip nhrp nhs json",
		"sh ip nhrp shortcut json", "sh ip nhrp traffic json", "sh running-config json", "sh version json"} {
		out := run(line)
		var v any
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Errorf("%s: not JSON: %v\n%s", line, err, out)
		}
	}
	// debug nhrp streams until interrupted (here: a context that ends).
	debug := func(args ...string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		var out, errb bytes.Buffer
		if code := Run(ctx, append([]string{"--socket", sock, "debug", "nhrp"}, args...), strings.NewReader(""), &out, &errb, nil); code != 0 {
			t.Errorf("debug nhrp %v: exit %d, %s", args, code, errb.String())
		}
		return out.String()
	}
	out := debug()
	for _, w := range []string{"NHRP debugging is on (events)", "NHRP: shortcut-up 10.2.0.0/24 via 172.16.2.1"} {
		if !strings.Contains(out, w) {
			t.Errorf("debug nhrp lacks %q:\n%s", w, out)
		}
	}
	var ev nhrp.Event
	if err := json.Unmarshal([]byte(debug("json")), &ev); err != nil || ev.Kind != nhrp.EventShortcutUp {
		t.Errorf("debug nhrp json: %+v %v", ev, err)
	}
}
