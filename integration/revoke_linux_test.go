package integration

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/daemon/control"
)

// revokeGoal is how soon after the new CRL is in place a revoked spoke's
// SAs and registrations must be gone.
const revokeGoal = 5 * time.Second

// testLabRevoke revokes spoke2's certificate while it is registered and
// carrying traffic to spoke1 over their shortcut: within revokeGoal of
// the new CRL being in place both hubs have ended its registration and
// SAs, spoke1 its shortcut and SA, each hub audited the end with the
// serial; show crypto names the CRL in force; spoke2's attempts to come
// back are refused; spoke1 and the hubs go on.
func testLabRevoke(t *testing.T, l *labEnv) {
	spoke2NBMA := labSpoke2NBMA
	cb, err := os.ReadFile(filepath.Join(l.dir, "pki", "spoke2.crt"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(cb)
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	serial := cert.SerialNumber.Text(16)
	if out, err := l.run(t, "exec", "spoke1-h1", "--", "ping", "-c", "2", "-i", "0.2", "10.2.0.2"); err != nil || !strings.Contains(out, "ttl=62") {
		t.Fatalf("spoke1's LAN does not reach spoke2's over a shortcut: %v\n%s", err, out)
	}
	for _, hub := range []string{"hub1", "hub2"} {
		if _, ok := labEntry(t, l, hub, "172.16.2.1"); !ok {
			t.Fatalf("%s has no registration of spoke2 to begin with", hub)
		}
	}
	saUp := func(node string, peer string) bool {
		for _, sa := range labCrypto(t, l, node).SAs {
			if sa.RemoteHost.String() == peer && sa.Up() {
				return true
			}
		}
		return false
	}
	traffic := pingAway(t, l, "spoke1-h1", "10.2.0.2", 30)
	out, err := l.run(t, "revoke", "spoke2")
	if err != nil {
		t.Fatalf("revoke spoke2: %v\n%s", err, out)
	}
	placed := time.Now()
	t.Logf("%s", strings.TrimSpace(out))
	var left []string
	took := waitFor(t, revokeGoal, "spoke2's SAs and registrations ended everywhere (left: see below)", func() bool {
		left = nil
		for _, hub := range []string{"hub1", "hub2"} {
			if _, ok := labEntry(t, l, hub, "172.16.2.1"); ok {
				left = append(left, hub+" registration")
			}
			if saUp(hub, spoke2NBMA.String()) {
				left = append(left, hub+" SA")
			}
		}
		if saUp("spoke1", spoke2NBMA.String()) {
			left = append(left, "spoke1 SA")
		}
		if e, ok := labCacheEntry(t, l, "spoke1", labSpoke2); ok && e.NBMA == spoke2NBMA {
			left = append(left, "spoke1 binding")
		}
		if len(left) > 0 {
			t.Logf("%v after the CRL: %v", time.Since(placed).Round(100*time.Millisecond), left)
		}
		return len(left) == 0
	})
	t.Logf("spoke2's certificate revoked: its SAs and registrations ended at both hubs and spoke1 %v after the CRL was in place", took.Round(time.Millisecond))
	// From here on the hubs' charons refuse spoke2 themselves (the CRL
	// they were given decides its certificate status), rather than let its
	// SAs come up for dmvpnd to end again: what they log from now on.
	charonLog := func(hub string) string { return filepath.Join(l.dir, hub, "ipsec", "charon.log") }
	logFrom := map[string]int64{}
	for _, hub := range []string{"hub1", "hub2"} {
		st, err := os.Stat(charonLog(hub))
		if err != nil {
			t.Fatal(err)
		}
		logFrom[hub] = st.Size()
	}
	traffic()

	for _, hub := range []string{"hub1", "hub2"} {
		found := false
		for _, a := range readAudit(t, filepath.Join(l.dir, hub, "audit.jsonl")) {
			if a.Event == "certificate revoked: SA ended" && a.Serial == serial && a.NBMA == spoke2NBMA.String() {
				found = true
			}
		}
		if !found {
			t.Errorf("%s did not audit the end of spoke2's SA with serial %s", hub, serial)
		}
		cr := l.ctl(t, hub, "show", "crypto", "sa")
		if !strings.Contains(cr, "CRL in force: C=FI, O=dmvpn-lab, CN=dmvpn-lab CA, number 2,") || !strings.Contains(cr, ", 1 revoked (") || strings.Contains(cr, "stale") {
			t.Errorf("%s's show crypto sa does not name the CRL in force:\n%s", hub, cr)
		}
	}
	// spoke2 tries again, and is refused: its requests go out, none is
	// answered positively.
	var r control.NHSResponse
	if err := json.Unmarshal([]byte(l.ctl(t, "spoke2", "show", "ip", "nhrp", "nhs", "json")), &r); err != nil {
		t.Fatal(err)
	}
	sent, replies := map[string]uint64{}, map[string]uint64{}
	for _, s := range r.Servers {
		sent[s.NBMA.String()], replies[s.NBMA.String()] = s.Sent, s.Replies
	}
	waitFor(t, 15*time.Second, "spoke2 trying both hubs again", func() bool {
		if err := json.Unmarshal([]byte(l.ctl(t, "spoke2", "show", "ip", "nhrp", "nhs", "json")), &r); err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, s := range r.Servers {
			if s.Sent > sent[s.NBMA.String()] {
				n++
			}
		}
		return n == len(r.Servers)
	})
	// spoke2's tries reach the hubs' charons, which refuse its revoked
	// certificate (strongSwan's own words) and set up no SA with it.
	for _, hub := range []string{"hub1", "hub2"} {
		var since string
		waitFor(t, 15*time.Second, hub+"'s charon refusing spoke2's revoked certificate", func() bool {
			b, err := os.ReadFile(charonLog(hub))
			if err != nil {
				t.Fatal(err)
			}
			since = string(b[min(logFrom[hub], int64(len(b))):])
			return strings.Contains(since, "certificate was revoked on")
		})
		for _, line := range strings.Split(since, "\n") {
			if strings.Contains(line, "IKE_SA") && strings.Contains(line, "established between") && strings.Contains(line, "..."+spoke2NBMA.String()+"[") {
				t.Errorf("%s's charon set up an SA with the revoked spoke2: %s", hub, line)
			}
		}
	}
	// Its requests since went unanswered (the state it shows stays until
	// its retries give up).
	for _, s := range r.Servers {
		if s.Replies > replies[s.NBMA.String()] {
			t.Errorf("spoke2 got %d answers from %s after its certificate was revoked: %+v", s.Replies-replies[s.NBMA.String()], s.NBMA, s)
		}
	}
	for _, hub := range []string{"hub1", "hub2"} {
		if e, ok := labEntry(t, l, hub, "172.16.2.1"); ok {
			t.Errorf("%s registered the revoked spoke2 again: %+v", hub, e)
		}
	}
	// The others go on: spoke1's LAN reaches hub1 (a first packet may meet
	// an SA being set up again after the earlier steps).
	var last string
	waitFor(t, 10*time.Second, "spoke1's LAN reaching hub1 after spoke2's revocation (last: see below)", func() bool {
		var ok bool
		ok, last = pingReply(t, l, "spoke1-h1", "172.16.0.1")
		if !ok {
			t.Logf("spoke1-h1 → 172.16.0.1: %s", last)
		}
		return ok
	})
}
