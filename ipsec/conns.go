package ipsec

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/strongswan/govici/vici"
)

// Connection names. A hub has one connection that accepts any spoke; a
// spoke has one per next hop server, one per shortcut peer, and one that
// accepts shortcuts other spokes initiate.
const (
	connHub    = "dmvpn-hub"
	connAccept = "dmvpn-accept"
	childName  = "gre"
)

// connNHS and connPeer name the connection to one peer.
func connNHS(nbma netip.Addr) string  { return "dmvpn-nhs-" + nbma.String() }
func connPeer(nbma netip.Addr) string { return "dmvpn-peer-" + nbma.String() }

// connKind says how a connection behaves.
type connKind int

const (
	kindAccept connKind = iota // responder only: the hub's, the spoke's accept
	kindNHS                    // to a server: kept up, restarted on loss
	kindPeer                   // to a shortcut peer: up while the shortcut is
)

// connSpec is one connection to load.
type connSpec struct {
	name   string
	kind   connKind
	remote netip.Addr // invalid: any
	// remoteID is the identity the peer must prove; empty: any signed by
	// the CA (the DMVPN fields are checked after).
	remoteID string
	// local is the address to initiate from (this node's NBMA address as
	// its uplinks decide it); invalid: any, as the kernel routes.
	local netip.Addr
}

// creds are the PEM blobs a connection carries.
type creds struct {
	cert string   // this node's certificate
	cas  []string // CA certificates
}

// loadConnMessage builds the load-conn message of a connection.
func loadConnMessage(spec connSpec, cfg Config, mode Mode, cr creds) *vici.Message {
	child := msg(
		"local_ts", []string{"dynamic[gre]"},
		"remote_ts", []string{"dynamic[gre]"},
		"esp_proposals", cfg.ESPProposals,
	)
	if mode == ModeUserspace {
		child.Set("mode", "tunnel") // kernel-libipsec does tunnel mode only
		// A peer behind NAT proposes its private address as its
		// selector: accept any single address and alias it (alias.go).
		child.Set("remote_ts", []string{"0.0.0.0/0[gre]"})
	} else {
		child.Set("mode", "transport")
	}
	// charon neither restarts an SA whose peer went silent nor one the
	// peer closed: dmvpnd brings it up again (the engine registers again
	// at once, through PeerUp) with the connection as loaded now. charon's
	// own restart would reuse the configuration the SA was set up with (a
	// rotated certificate would come back old), and would come straight
	// back after a refusal the engine backs off from.
	child.Set("dpd_action", "clear")
	child.Set("close_action", "none")
	child.Set("start_action", "none")
	local := msg("auth", "pubkey", "certs", []string{cr.cert})
	// Revocation: a certificate a loaded CRL (ipsec.crl) revokes is
	// refused in any case; one that names a CRL distribution point or an
	// OCSP responder must be shown not revoked by them (charon's
	// revocation plugin fetches them with curl), or it is refused too.
	remote := msg("auth", "pubkey", "cacerts", cr.cas, "revocation", "ifuri")
	if spec.remoteID != "" {
		remote.Set("id", spec.remoteID)
	}
	remoteAddrs := []string{"%any"}
	if spec.remote.IsValid() {
		remoteAddrs = []string{spec.remote.String()}
	}
	localAddrs := []string{"%any"}
	if spec.local.IsValid() && spec.kind != kindAccept {
		localAddrs = []string{spec.local.String()}
	}
	conn := msg(
		"version", "2",
		"local_addrs", localAddrs,
		"remote_addrs", remoteAddrs,
		"proposals", cfg.Proposals,
		"dpd_delay", fmt.Sprintf("%ds", max(1, int(cfg.DPDDelay.Round(time.Second)/time.Second))),
		"mobike", "no",
		"local", local,
		"remote", remote,
		"children", msg(childName, child),
	)
	if mode == ModeUserspace {
		conn.Set("encap", "yes") // kernel-libipsec needs ESP in UDP
	}
	switch spec.kind {
	case kindNHS:
		conn.Set("keyingtries", "0") // forever
		conn.Set("unique", "replace")
	case kindPeer:
		conn.Set("keyingtries", "1")
	case kindAccept:
		conn.Set("unique", "replace")
	}
	return msg(spec.name, conn)
}

// sanitize keeps a connection name within what VICI accepts.
func sanitize(s string) string {
	return strings.NewReplacer(":", "_", "/", "_").Replace(s)
}
