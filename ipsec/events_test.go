package ipsec

import (
	"context"
	"net/netip"
	"testing"
	"time"

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
	m := &Manager{mode: ModeKernel, log: zap.NewNop(), sas: newSATable(), waiters: map[netip.Addr][]chan struct{}{},
		certQ: make(chan certReq, 4), hooks: Hooks{PeerLost: func(_ netip.Addr, reason string) { lost = append(lost, reason) }}}
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

// rekeyed is an ike-rekey event: IKE SA old of conn replaced by new (the
// event lists IKE SAs without their CHILD_SAs, as charon sends it).
func rekeyed(oldID, newID string) vici.Event {
	ike := func(id string) *vici.Message {
		return msg("uniqueid", id, "state", "ESTABLISHED", "local-host", "198.51.100.1", "remote-host", "192.0.2.1",
			"remote-id", "CN=hub", "initiator", "yes")
	}
	return vici.Event{Name: "ike-rekey", Message: msg("dmvpn-nhs-192.0.2.1", msg("old", ike(oldID), "new", ike(newID)))}
}

// TestRekeyThenDelete: an IKE rekey moves the SA to its new unique id
// without reading every SA, keeping its CHILD_SA and the identity it
// proved; when the peer then deletes the rekeyed SA, the engine hears
// "SA down" once. (Before, the rekey re-read every SA; a read that came
// after the delete left neither id in the table, and the delete event
// found nothing to report: the spoke never heard its server was gone.)
func TestRekeyThenDelete(t *testing.T) {
	hub := netip.MustParseAddr("192.0.2.1")
	var lost []string
	m := &Manager{mode: ModeKernel, log: zap.NewNop(), sas: newSATable(), waiters: map[netip.Addr][]chan struct{}{},
		verified: map[string]netip.Addr{}, certQ: make(chan certReq, 4),
		hooks: Hooks{PeerLost: func(_ netip.Addr, reason string) { lost = append(lost, reason) }}}
	m.stats.init()
	ctx := context.Background()

	m.handleEvent(ctx, updown("ike-updown", true, "ESTABLISHED", "INSTALLED"))
	m.verified["7"] = netip.MustParseAddr("10.0.0.1")
	// m.cmd is nil: a fallback to reading every SA would panic here.
	m.handleEvent(ctx, rekeyed("7", "8"))
	sas := m.sasTo(hub)
	if len(sas) != 1 || sas[0].IKEID != "8" || !sas[0].Up() {
		t.Fatalf("after the IKE rekey, want one SA up with unique id 8: %+v", sas)
	}
	if _, ok := m.verified["8"]; !ok {
		t.Errorf("the rekeyed SA lost the identity its peer proved: %v", m.verified)
	}

	down := updown("ike-updown", false, "DELETING", "INSTALLED")
	down.Message.Get("dmvpn-nhs-192.0.2.1").(*vici.Message).Set("uniqueid", "8")
	m.handleEvent(ctx, down)
	if m.peerUp(hub) || len(lost) != 1 {
		t.Errorf("after the rekeyed SA was deleted: up %v, PeerLost calls %v (want one)", m.peerUp(hub), lost)
	}
	if len(m.verified) != 0 {
		t.Errorf("a deleted SA's proof is kept: %v", m.verified)
	}
}

// TestChildRekey: a CHILD_SA rekey replaces the old CHILD_SA by the new
// one in the table without reading every SA.
func TestChildRekey(t *testing.T) {
	hub := netip.MustParseAddr("192.0.2.1")
	m := &Manager{mode: ModeKernel, log: zap.NewNop(), sas: newSATable(), waiters: map[netip.Addr][]chan struct{}{},
		certQ: make(chan certReq, 4)}
	m.stats.init()
	ctx := context.Background()
	m.handleEvent(ctx, updown("ike-updown", true, "ESTABLISHED", "INSTALLED"))
	ike := msg("uniqueid", "7", "state", "ESTABLISHED", "local-host", "198.51.100.1", "remote-host", "192.0.2.1")
	ike.Set("child-sas", msg("gre-3", msg(
		"old", msg("name", "gre", "uniqueid", "3", "state", "REKEYED"),
		"new", msg("name", "gre", "uniqueid", "4", "state", "INSTALLED"))))
	m.handleEvent(ctx, vici.Event{Name: "child-rekey", Message: msg("dmvpn-nhs-192.0.2.1", ike)})
	sas := m.sasTo(hub)
	if len(sas) != 1 || len(sas[0].Children) != 1 || sas[0].Children[0].ID != "4" || !sas[0].Up() {
		t.Errorf("after the CHILD_SA rekey, want the IKE SA with CHILD_SA 4 only: %+v", sas)
	}
}

// TestPeerUpWaitsForRelease: a PeerUp for a peer whose PeerDown is still
// terminating and unloading waits for it rather than initiating on a
// connection about to be unloaded.
func TestPeerUpWaitsForRelease(t *testing.T) {
	nbma := netip.MustParseAddr("192.0.2.1")
	m := &Manager{log: zap.NewNop()}
	release := make(chan struct{})
	m.releasing = map[netip.Addr]chan struct{}{nbma: release}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := m.waitReleased(ctx, nbma); err == nil {
		t.Fatal("waitReleased returned while the release was in flight")
	}
	close(release)
	if err := m.waitReleased(context.Background(), nbma); err != nil {
		t.Fatal(err)
	}
	if err := m.waitReleased(context.Background(), netip.MustParseAddr("192.0.2.2")); err != nil {
		t.Fatal(err)
	}
}
