package ipsec

import "fmt"

// The denial-of-service settings a managed charon gets (strongswan.conf,
// charon section; strongswan.conf(5) of strongSwan 5.9.8). Without them
// an IKE_SA_INIT flood is bounded only by charon's defaults, which leave
// the half-open and IKE SA counts unlimited.
const (
	// CharonCookieThreshold half-open IKE SAs (unprocessed IKE_SA_INITs
	// included) make charon answer every new IKE_SA_INIT with a cookie
	// (RFC 7296 2.6): a spoofed source then costs it no state. 30 is
	// strongSwan 5.9's default (older releases had 10), written so that
	// the setting does not depend on the release.
	CharonCookieThreshold = 30
	// CharonCookieThresholdIP is the same for the half-open IKE SAs of one
	// peer address (strongSwan's default).
	CharonCookieThresholdIP = 3
	// CharonBlockThreshold half-open IKE SAs from one peer address make
	// charon drop its further IKE_SA_INITs (strongSwan's default).
	CharonBlockThreshold = 5
	// CharonInitLimitHalfOpen half-open IKE SAs make charon drop new
	// IKE_SA_INITs unanswered. strongswan.conf(5) (IKE_SA_INIT DROPPING)
	// sizes it as about 10 s of what the responder sets up: a whole setup
	// costs our hub's charon about 6.9 ms of a core (README, IPsec at
	// scale), about 145 a second, so 1,000 is 7 s of work, under charon's
	// 30 s half_open_timeout; beyond it an initiator retransmits rather
	// than getting an answer it gave up waiting for.
	CharonInitLimitHalfOpen = 1000
)

// charonLimit is one key of the charon section with its value.
type charonLimit struct {
	Key   string
	Value int
}

// charonLimits returns the denial-of-service settings of the charon
// section for cfg (defaults applied). ikesa_limit, the IKE SAs beyond
// which charon drops every new IKE_SA_INIT (its own initiations are not
// limited), is sized from the node's limits.max_peers: one IKE SA per
// peer, twice over for the rekeys and make-before-break reauthentications
// that hold two at once, plus the half-open ones (with the default
// 131,072 peers: 2 × 131,072 + 1,000 = 263,144).
func charonLimits(cfg Config) []charonLimit {
	return []charonLimit{
		{"cookie_threshold", CharonCookieThreshold},
		{"cookie_threshold_ip", CharonCookieThresholdIP},
		{"block_threshold", CharonBlockThreshold},
		{"init_limit_half_open", CharonInitLimitHalfOpen},
		{"ikesa_limit", 2*cfg.MaxPeers + CharonInitLimitHalfOpen},
	}
}

// String renders the setting as a strongswan.conf line.
func (l charonLimit) String() string { return fmt.Sprintf("%s = %d", l.Key, l.Value) }
