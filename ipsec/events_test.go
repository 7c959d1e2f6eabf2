package ipsec

import (
	"context"
	"net/netip"
	"testing"

	"github.com/strongswan/govici/vici"
	"go.uber.org/zap"
)

// updown is an ike-updown or child-updown event for one IKE SA of conn
// with the hub, with a CHILD_SA in childState ("" for none).
func updown(name string, up bool, ikeState, childState string) vici.Event {
	ike := msg("uniqueid", "7", "state", ikeState, "local-host", "198.51.100.1", "remote-host", "192.0.2.1",
		"initiator", "yes")
	if childState != "" {
		ike.Set("child-sas", msg("gre-3", msg("name", "gre", "uniqueid", "3", "state", childState)))
	}
	m := msg("dmvpn-nhs-192.0.2.1", ike)
	if up {
		m.Set("up", "yes")
	}
	return vici.Event{Name: name, Message: m}
}

// TestDeadPeerEventsOrder: when a server goes silent charon reports the
// IKE SA down, then its CHILD_SA down while the IKE SA still reads
// ESTABLISHED. The second event must not bring the IKE SA back: a
// lingering entry reads as "being set up", and the next PeerUp would wait
// for it instead of initiating.
func TestDeadPeerEventsOrder(t *testing.T) {
	hub := netip.MustParseAddr("192.0.2.1")
	var lost []string
	m := &Manager{mode: ModeKernel, log: zap.NewNop(), sas: map[string]SA{}, waiters: map[netip.Addr][]chan struct{}{},
		certQ: make(chan string, 4), hooks: Hooks{PeerLost: func(_ netip.Addr, reason string) { lost = append(lost, reason) }}}
	m.stats.init()
	ctx := context.Background()

	m.handleEvent(ctx, updown("ike-updown", true, "ESTABLISHED", "INSTALLED"))
	if !m.peerUp(hub) {
		t.Fatal("the SA is not up after its up event")
	}
	m.handleEvent(ctx, updown("ike-updown", false, "DELETING", "INSTALLED"))
	m.handleEvent(ctx, updown("child-updown", false, "ESTABLISHED", "DELETING"))
	if m.connecting(hub) || m.peerUp(hub) {
		t.Errorf("the dead IKE SA is back in the table: %+v", m.sasTo(hub))
	}
	if len(lost) != 1 {
		t.Errorf("PeerLost called %d times (%v), want once", len(lost), lost)
	}

	// A CHILD_SA going down while its IKE SA lives on keeps the IKE SA.
	m.handleEvent(ctx, updown("ike-updown", true, "ESTABLISHED", "INSTALLED"))
	m.handleEvent(ctx, updown("child-updown", false, "ESTABLISHED", "DELETING"))
	if sas := m.sasTo(hub); len(sas) != 1 || len(sas[0].Children) != 0 {
		t.Errorf("after its only CHILD_SA went down, want the IKE SA without children: %+v", sas)
	}
}
