package integration

import (
	"bufio"
	"context"
	"crypto/x509/pkix"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/internal/pki"
	"github.com/opendmvpn/dmvpn/lab/testbed"
)

// auditLine is one line of the audit log.
type auditLine struct {
	Event   string `json:"event"`
	NBMA    string `json:"nbma"`
	Tunnel  string `json:"tunnel_address"`
	Subject string `json:"subject"`
	Serial  string `json:"serial"`
	Reason  string `json:"reason"`
	Kind    string `json:"kind"`
	IKEID   string `json:"ike_id"`
	// Check is the identity check a refused NHRP packet failed.
	Check string `json:"check"`
	// Time is when the hub decided (to the millisecond).
	Time time.Time `json:"time"`
}

func readAudit(t *testing.T, path string) []auditLine {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []auditLine
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var l auditLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		out = append(out, l)
	}
	return out
}

// TestIPsecRefusals brings up, next to a legitimate spoke, spokes whose
// certificates must not get them in: one signed by the right CA for
// another spoke's tunnel address, one whose OU value smuggles
// ", OU=GRE=<its address>", one expired, one from another CA. The first
// two get an SA and are refused at registration (audited, SA terminated,
// refused again when they come back, one log line); the last two never
// get an SA. The legitimate spoke's binding is untouched throughout.
func TestIPsecRefusals(t *testing.T) {
	requireTestbed(t)
	requireCharon(t)
	p := newTestPKI(t)
	t.Cleanup(func() { p.dumpLogs() })
	bin := buildDmvpnd(t)
	sites := []testbed.Site{
		{Name: "hub", Kind: testbed.Hub, NBMA: netip.MustParsePrefix("192.0.2.1/24")},
		{Name: "s1", Kind: testbed.Spoke, NBMA: netip.MustParsePrefix("198.51.100.1/26"), LAN: netip.MustParsePrefix("10.1.0.1/24")},
		{Name: "rogue", Kind: testbed.Spoke, NBMA: netip.MustParsePrefix("198.51.100.65/26"), LAN: netip.MustParsePrefix("10.2.0.1/24")},
		{Name: "tricky", Kind: testbed.Spoke, NBMA: netip.MustParsePrefix("198.51.100.129/26"), LAN: netip.MustParsePrefix("10.3.0.1/24")},
		{Name: "expired", Kind: testbed.Spoke, NBMA: netip.MustParsePrefix("198.51.100.193/26"), LAN: netip.MustParsePrefix("10.4.0.1/24")},
		{Name: "otherca", Kind: testbed.Spoke, NBMA: netip.MustParsePrefix("203.0.113.1/24"), LAN: netip.MustParsePrefix("10.5.0.1/24")},
	}
	tb, err := testbed.New(context.Background(), testbed.Spec{Sites: sites}, testbed.WithLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tb.Close() })

	hub := startDaemon(t, bin, tb.Node("hub"), hubYAML("userspace")+p.node("hub", "C=FI, O=Example, OU=GRE=10.0.0.1, CN=hub", ""))
	spoke := func(name, addr, lan, section string, args ...string) *daemonNode {
		return startDaemon(t, bin, tb.Node(name), spokeYAML(name, "userspace", addr, lan)+section, args...)
	}
	// The refused spokes' own dmvpnd would refuse their certificates
	// (another node's OU=GRE=, an ambiguous subject, expired): they play
	// attackers whose node does not check.
	const unchecked = "--unchecked-credentials"
	s1 := spoke("s1", "10.0.0.11", "10.1.0.0/24", p.node("s1", "C=FI, O=Example, OU=GRE=10.0.0.11, OU=AS=65011, CN=s1", ""))
	waitFor(t, 15*time.Second, "the legitimate spoke registered", func() bool {
		e, ok := hub.entry(netip.MustParsePrefix("10.0.0.11/32"))
		return ok && strings.Contains(e.Identity, "CN=s1")
	})

	// Same CA, the certificate names spoke 1's tunnel address; the spoke
	// registers its own.
	spoke("rogue", "10.0.0.22", "10.2.0.0/24", p.node("rogue", "C=FI, O=Example, OU=GRE=10.0.0.11, CN=rogue", ""), unchecked)
	// One OU whose value reads ", OU=GRE=10.0.0.23" when the DN is
	// rendered as text.
	ou := pki.ParseDNOID("OU")
	tricky, err := p.ca.Issue(append(mustDN(t, "C=FI, O=Example"),
		pki.RDN(ou, "x, OU=GRE=10.0.0.23"), pki.RDN(pki.ParseDNOID("CN"), "tricky")), time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	spoke("tricky", "10.0.0.23", "10.3.0.0/24", p.section("tricky", tricky, ""), unchecked)
	// Expired yesterday.
	expired, err := p.ca.Issue(mustDN(t, "C=FI, O=Example, OU=GRE=10.0.0.24, CN=expired"), time.Now().AddDate(0, 0, -30), time.Now().AddDate(0, 0, -1))
	if err != nil {
		t.Fatal(err)
	}
	expiredNode := spoke("expired", "10.0.0.24", "10.4.0.0/24", p.section("expired", expired, ""), unchecked)
	// Another CA: the spoke trusts it, the hub does not.
	other, err := pki.NewCA("C=FI, O=Elsewhere, CN=Other CA")
	if err != nil {
		t.Fatal(err)
	}
	otherCA, err := other.WriteCA(p.dir, "other-ca")
	if err != nil {
		t.Fatal(err)
	}
	oc, err := other.IssueDN("C=FI, O=Elsewhere, OU=GRE=10.0.0.25, CN=otherca")
	if err != nil {
		t.Fatal(err)
	}
	otherStart := time.Now()
	othercaNode := spoke("otherca", "10.0.0.25", "10.5.0.0/24", p.sectionCA("otherca", oc, otherCA, ""))

	audit := filepath.Join(p.dir, "audit-hub.jsonl")
	refusals := func(nbma string) []auditLine {
		var out []auditLine
		for _, l := range readAudit(t, audit) {
			if l.NBMA == nbma && l.Event == "registration refused" {
				out = append(out, l)
			}
		}
		return out
	}
	// The rogue is refused, its SA terminated; it comes back over a new
	// SA and is refused again.
	waitFor(t, 45*time.Second, "the rogue refused over two different SAs", func() bool {
		ids := map[string]bool{}
		for _, l := range refusals("198.51.100.65") {
			ids[l.IKEID] = true
		}
		return len(ids) >= 2
	})
	for _, l := range refusals("198.51.100.65") {
		if l.Kind != "gre_mismatch" || l.Tunnel != "10.0.0.22" || !strings.Contains(l.Subject, "CN=rogue") || l.Serial == "" || !strings.Contains(l.Reason, "GRE=10.0.0.11") {
			t.Errorf("rogue's audit line: %+v", l)
		}
	}
	waitFor(t, 30*time.Second, "the tricky certificate refused", func() bool { return len(refusals("198.51.100.129")) > 0 })
	for _, l := range refusals("198.51.100.129") {
		if l.Kind != "identity_ambiguous" || l.Tunnel != "10.0.0.23" {
			t.Errorf("tricky certificate's audit line: %+v", l)
		}
	}

	// The spoke with the foreign certificate learns from charon that the
	// negotiation failed (AUTHENTICATION_FAILED), without waiting out the
	// SA timeout (10 s), and keeps trying.
	waitFor(t, 8*time.Second, "the foreign spoke's failed negotiation", func() bool {
		st := othercaNode.crypto().Stats
		return st != nil && st.IKEFailures["negotiation"] > 0
	})
	t.Logf("foreign certificate: negotiation failure known %v after the spoke started", time.Since(otherStart).Round(time.Millisecond))
	// The expired certificate has been tried and refused as well: only
	// then does no SA and no registration of either say anything.
	waitFor(t, 30*time.Second, "the expired spoke's failed negotiation", func() bool {
		st := expiredNode.crypto().Stats
		return st != nil && st.IKEFailures["negotiation"] > 0
	})
	for _, nbma := range []string{"198.51.100.193", "203.0.113.1"} {
		if hub.saUpWith(netip.MustParseAddr(nbma)) {
			t.Errorf("the hub has an SA with %s", nbma)
		}
		if r := refusals(nbma); len(r) > 0 {
			t.Errorf("%s got as far as registering: %+v", nbma, r)
		}
	}
	for _, a := range []string{"10.0.0.22", "10.0.0.23", "10.0.0.24", "10.0.0.25"} {
		if e, ok := hub.entry(netip.PrefixFrom(netip.MustParseAddr(a), 32)); ok {
			t.Errorf("binding for %s: %s", a, jsonString(e))
		}
	}
	if e, ok := hub.entry(netip.MustParsePrefix("10.0.0.11/32")); !ok || e.NBMA != netip.MustParseAddr("198.51.100.1") || !strings.Contains(e.Identity, "CN=s1") {
		t.Errorf("the legitimate spoke's binding changed: %s", jsonString(e))
	}
	_ = s1

	// Counted by kind; logged once a minute per peer and reason, not per
	// refusal.
	st := hub.crypto().Stats
	if st == nil || st.Refused["gre_mismatch"] < 2 || st.Refused["identity_ambiguous"] < 1 {
		t.Errorf("refusal counters: %+v", st)
	}
	var rogueLogged int
	for _, line := range strings.Split(hub.proc.Output(), "\n") {
		if strings.Contains(line, "WARN\tdaemon.nhrp\tregistration refused") && strings.Contains(line, "198.51.100.65") {
			rogueLogged++
		}
	}
	if n := len(refusals("198.51.100.65")); rogueLogged != 1 {
		t.Errorf("the rogue was refused %d times and logged %d times, want once", n, rogueLogged)
	}
	t.Logf("rogue refused %d times (logged once), tricky %d, audit %s", len(refusals("198.51.100.65")), len(refusals("198.51.100.129")), audit)
}

func mustDN(t *testing.T, dn string) pkix.RDNSequence {
	t.Helper()
	s, err := pki.ParseDN(dn)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
