package ipsec

import (
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/strongswan/govici/vici"
)

func TestLogLine(t *testing.T) {
	m := vici.NewMessage()
	for k, v := range map[string]string{"group": "IKE", "level": "1", "thread": "12", "ikesa-name": "dmvpn-hub", "ikesa-uniqueid": "3",
		"msg": "IKE_SA dmvpn-hub[3] established between 192.0.2.1[C=FI, CN=hub]...198.51.100.1[C=FI, CN=s1]"} {
		if err := m.Set(k, v); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l := logLine(m, now)
	want := LogLine{Time: now, Group: "IKE", Level: 1, Thread: 12, Conn: "dmvpn-hub", IKEID: "3",
		Msg: "IKE_SA dmvpn-hub[3] established between 192.0.2.1[C=FI, CN=hub]...198.51.100.1[C=FI, CN=s1]"}
	if diff := cmp.Diff(want, l); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if s := l.String(); s != "12[IKE] <dmvpn-hub|3> "+want.Msg {
		t.Errorf("String: %q", s)
	}
	if s := (LogLine{Thread: 4, Group: "NET", Msg: "x"}).String(); s != "04[NET] x" {
		t.Errorf("String without an SA: %q", s)
	}
}

// TestPeerFilter: the lines of the peer's IKE SAs, of its connections,
// and those naming its address pass; another peer's (even one whose
// address starts the same) do not.
func TestPeerFilter(t *testing.T) {
	peer := netip.MustParseAddr("192.0.2.1")
	f := &peerFilter{peer: peer.String(), conns: [2]string{connNHS(peer), connPeer(peer)},
		ids: func() map[string]bool { return map[string]bool{"3": true} }}
	now := time.Now()
	for _, c := range []struct {
		l    LogLine
		want bool
	}{
		{LogLine{Conn: "dmvpn-hub", IKEID: "3", Msg: "sending DPD request"}, true},
		{LogLine{Conn: "dmvpn-hub", IKEID: "4", Msg: "sending DPD request"}, false},
		{LogLine{Conn: "dmvpn-nhs-192.0.2.1", Msg: "initiating IKE_SA"}, true},
		{LogLine{Conn: "dmvpn-peer-192.0.2.1", Msg: "initiating IKE_SA"}, true},
		{LogLine{Conn: "dmvpn-nhs-192.0.2.17", Msg: "initiating IKE_SA"}, false},
		{LogLine{Msg: "received packet: from 192.0.2.1[500] to 198.51.100.1[500] (240 bytes)"}, true},
		{LogLine{Msg: "received packet: from 192.0.2.17[500] to 198.51.100.1[500] (240 bytes)"}, false},
		{LogLine{Msg: "192.0.2.1 is initiating an IKE_SA"}, true},
		{LogLine{Msg: "10.192.0.2.1 is not an address"}, false},
		{LogLine{Msg: "loaded certificate"}, false},
	} {
		if got := f.match(c.l, now); got != c.want {
			t.Errorf("%+v: %v, want %v", c.l, got, c.want)
		}
	}
}
