package ipsec

import (
	"context"
	"errors"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/opendmvpn/dmvpn/internal/auditlimit"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// verifyManager is a manager without charon whose SA table and captured
// certificates are set by the test: the decisions of Verify and checkPeer
// run on them as they would on charon's.
func verifyManager(t *testing.T) *Manager {
	t.Helper()
	m := &Manager{mode: ModeKernel, log: zap.NewNop(), audit: zap.NewNop(), sas: newSATable(),
		certs: map[string][]byte{}, certSeen: map[string]time.Time{}, verified: map[string]netip.Addr{},
		waiters: map[netip.Addr][]chan struct{}{}, logged: map[string]time.Time{},
		lines: auditlimit.New(auditlimit.Config{}), terminating: map[string]bool{}, done: make(chan struct{})}
	m.stats.init()
	return m
}

// addPeer puts an established SA from nbma, authenticated with der, in
// the table.
func addPeer(t *testing.T, m *Manager, id string, nbma netip.Addr, der []byte, initiator bool) {
	t.Helper()
	subj, err := renderLikeCharon(der)
	if err != nil {
		t.Fatal(err)
	}
	m.sas.put(SA{IKEID: id, State: "ESTABLISHED", RemoteHost: nbma, RemoteID: subj, Initiator: initiator,
		Children: []ChildSA{{State: "INSTALLED"}}, upSeen: time.Now().Add(-time.Second)})
	m.certs[subj] = der
	m.certSeen[subj] = time.Now()
}

func TestVerifyClaims(t *testing.T) {
	ca := newCA(t)
	spoke := netip.MustParseAddr("198.51.100.1")
	m := verifyManager(t)
	addPeer(t, m, "1", spoke, issue(t, ca, dn(t, "C=FI, O=Example, OU=GRE=172.16.1.1, OU=NET=10.1.0.0/24, CN=spoke1")), false)
	bare := netip.MustParseAddr("198.51.100.2")
	addPeer(t, m, "2", bare, issue(t, ca, dn(t, "C=FI, O=Example, OU=GRE=172.16.2.1, CN=spoke2")), false)
	expired := netip.MustParseAddr("198.51.100.3")
	old, err := ca.Issue(dn(t, "C=FI, O=Example, OU=GRE=172.16.3.1, CN=spoke3"), time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	addPeer(t, m, "3", expired, old.Cert.Raw, false)
	twice := netip.MustParseAddr("198.51.100.4")
	addPeer(t, m, "4", twice, issue(t, ca, dn(t, "C=FI, O=Example, OU=GRE=172.16.4.1, CN=spoke4")), false)
	addPeer(t, m, "5", twice, issue(t, ca, dn(t, "C=FI, O=Example, OU=GRE=172.16.5.1, CN=spoke5")), false)

	a := netip.MustParseAddr
	p := netip.MustParsePrefix
	for _, c := range []struct {
		name  string
		claim nhrp.Claim
		kind  string
	}{
		{"its own address", nhrp.Claim{NBMA: spoke, Proto: a("172.16.1.1")}, ""},
		{"its own network", nhrp.Claim{NBMA: spoke, Proto: a("172.16.1.1"), Prefix: p("10.1.0.0/24")}, ""},
		{"a network inside its own", nhrp.Claim{NBMA: spoke, Proto: a("172.16.1.1"), Prefix: p("10.1.0.128/25")}, ""},
		{"another's address", nhrp.Claim{NBMA: spoke, Proto: a("172.16.2.1")}, RefusedWrongGRE},
		{"another's network", nhrp.Claim{NBMA: spoke, Proto: a("172.16.1.1"), Prefix: p("10.2.0.0/24")}, RefusedWrongNET},
		{"a network wider than its own", nhrp.Claim{NBMA: spoke, Proto: a("172.16.1.1"), Prefix: p("10.0.0.0/8")}, RefusedWrongNET},
		{"any network without OU=NET=", nhrp.Claim{NBMA: bare, Proto: a("172.16.2.1"), Prefix: p("10.9.0.0/16")}, ""},
		{"no SA", nhrp.Claim{NBMA: a("203.0.113.9"), Proto: a("172.16.9.1")}, RefusedNoSA},
		{"an expired certificate", nhrp.Claim{NBMA: expired, Proto: a("172.16.3.1")}, RefusedExpired},
		{"two identities at one address", nhrp.Claim{NBMA: twice, Proto: a("172.16.4.1")}, RefusedIdentities},
	} {
		t.Run(c.name, func(t *testing.T) {
			v, kind, _, _ := m.verify(context.Background(), c.claim)
			if kind != c.kind || (v.Code == 0) != (c.kind == "") {
				t.Errorf("verdict %+v kind %q, want kind %q", v, kind, c.kind)
			}
			if c.kind == "" && (v.Identity == "" || (c.claim.NBMA == spoke && len(v.Networks) != 1)) {
				t.Errorf("accepted without identity or networks: %+v", v)
			}
		})
	}
}

// TestCheckShortcutPeer: a shortcut peer's certificate must name the
// tunnel address the shortcut is for; a refusal wraps nhrp.ErrIdentity,
// and once an SA proved an address, a claim of another one does not undo
// it.
func TestCheckShortcutPeer(t *testing.T) {
	ca := newCA(t)
	peer := netip.MustParseAddr("198.51.100.2")
	m := verifyManager(t)
	addPeer(t, m, "7", peer, issue(t, ca, dn(t, "C=FI, O=Example, OU=GRE=172.16.2.1, CN=spoke2")), false)
	ctx := context.Background()
	err := m.checkPeer(ctx, nhrp.Peer{NBMA: peer, Proto: netip.MustParseAddr("172.16.1.1"), Role: "shortcut"})
	if !errors.Is(err, nhrp.ErrIdentity) {
		t.Fatalf("shortcut for 172.16.1.1 over spoke2's certificate: %v, want ErrIdentity", err)
	}
	if err := m.checkPeer(ctx, nhrp.Peer{NBMA: peer, Proto: netip.MustParseAddr("172.16.2.1"), Role: "shortcut"}); err != nil {
		t.Fatalf("shortcut for its own address: %v", err)
	}
	if got := m.verified["7"]; got != netip.MustParseAddr("172.16.2.1") {
		t.Errorf("verified %v", got)
	}
	if err := m.checkPeer(ctx, nhrp.Peer{NBMA: peer, Proto: netip.MustParseAddr("172.16.3.1"), Role: "shortcut"}); !errors.Is(err, nhrp.ErrIdentity) {
		t.Errorf("another address over a verified SA: %v, want ErrIdentity", err)
	}
	if got := m.verified["7"]; got != netip.MustParseAddr("172.16.2.1") {
		t.Errorf("a refused claim changed what the SA proved: %v", got)
	}
	if n := m.Stats().ClaimsRefused[RefusedWrongGRE]; n != 2 {
		t.Errorf("%d gre_mismatch refusals counted, want 2", n)
	}
}

// TestRegistrationDecisionsLimited: a peer with a valid certificate
// repeating a refused registration (another spoke's address) gets every
// refusal counted, one audit line a second, a summary of the rest, and
// one pending ending of its SA, not a goroutine and a VICI call each;
// accepted registrations are not limited: each has its line, however
// close together (a new SA or a renewed certificate must show).
func TestRegistrationDecisionsLimited(t *testing.T) {
	ca := newCA(t)
	m := verifyManager(t)
	defer close(m.done)
	core, audit := observer.New(zap.InfoLevel)
	m.audit = zap.New(core)
	now := time.Unix(1_000_000, 0)
	m.lines = auditlimit.New(auditlimit.Config{Now: func() time.Time { return now }})
	attacker, honest := netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.51.100.2")
	addPeer(t, m, "1", attacker, issue(t, ca, dn(t, "C=FI, O=Example, OU=GRE=172.16.1.1, CN=spoke1")), false)
	addPeer(t, m, "2", honest, issue(t, ca, dn(t, "C=FI, O=Example, OU=GRE=172.16.2.1, CN=spoke2")), false)
	ctx := context.Background()
	goroutines := runtime.NumGoroutine()
	for range 1000 {
		v := m.Authorize(ctx, nhrp.Registration{NBMA: attacker, Proto: netip.MustParsePrefix("172.16.2.1/32")})
		if v.Code == 0 {
			t.Fatal("another spoke's address was accepted")
		}
	}
	for range 3 {
		if v := m.Authorize(ctx, nhrp.Registration{NBMA: honest, Proto: netip.MustParsePrefix("172.16.2.1/32")}); v.Code != 0 {
			t.Fatalf("the honest spoke was refused: %s", v.Reason)
		}
	}
	if n := m.Stats().Refused[RefusedWrongGRE]; n != 1000 {
		t.Errorf("refusals counted: %d, want 1000", n)
	}
	if n := audit.FilterMessage("registration refused").Len(); n != 1 {
		t.Errorf("%d refusal lines in the same second, want 1", n)
	}
	if n := audit.FilterMessage("registration accepted").Len(); n != 3 {
		t.Errorf("%d accepted lines, want 3", n)
	}
	m.mu.Lock()
	pending := len(m.terminating)
	m.mu.Unlock()
	if more := runtime.NumGoroutine() - goroutines; pending != 1 || more > 10 {
		t.Errorf("%d SA endings pending and %d goroutines more, want the attacker's one", pending, more)
	}
	// The window's summary comes with the next decision after it.
	now = now.Add(auditlimit.DefaultSummary + time.Second)
	m.Authorize(ctx, nhrp.Registration{NBMA: attacker, Proto: netip.MustParsePrefix("172.16.2.1/32")})
	sum := audit.FilterMessage("packet refusals suppressed").All()
	if len(sum) != 1 || sum[0].ContextMap()["suppressed"] != uint64(999) {
		t.Errorf("summary lines %+v, want one of 999 suppressed", sum)
	}
}
