package integration

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/strongswan/govici/vici"

	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/ipsec"
)

// saWith returns a node's established SA with a peer.
func (d *daemonNode) saWith(nbma netip.Addr) (ipsec.SA, bool) {
	for _, sa := range d.crypto().SAs {
		if sa.RemoteHost == nbma && sa.Up() {
			return sa, true
		}
	}
	return ipsec.SA{}, false
}

// registeredSince reports whether spoke i's server answered a
// registration after t.
func (x *e2e) registeredSince(i int, t time.Time) bool {
	st := x.spokes[i].nhs()
	return len(st) > 0 && st[0].LastReply.After(t) && x.registered(i)
}

// TestIPsecRecovery: an IKE rekey leaves nothing stale (a registration
// after it is authorised over the rekeyed SA), a spoke whose SA the hub
// deletes comes back and registers again, and a spoke whose charon dies
// has it restarted, reloaded and registers again at once — not at its
// next refresh, 20 s away.
func TestIPsecRecovery(t *testing.T) {
	requireTestbed(t)
	requireCharon(t)
	p := newTestPKI(t)
	t.Cleanup(func() { p.dumpLogs() })
	x := newE2EWith(t, "userspace", p.ipsecExtra())
	waitFor(t, 30*time.Second, "all spokes registered over IPsec", x.allRegistered)
	s1, s2 := nbmaOf(x, 0), nbmaOf(x, 1)

	// IKE rekey of spoke 1's SA, from the hub: the SA's unique id changes.
	old, ok := x.hub.saWith(s1)
	if !ok {
		t.Fatal("no SA with spoke 1")
	}
	sess, err := vici.NewSession(vici.WithSocketPath(filepath.Join(p.dir, "state-hub", "charon.vici")))
	if err != nil {
		t.Fatal(err)
	}
	m := vici.NewMessage()
	m.Set("ike-id", old.IKEID)
	m.Set("ike", "yes")
	if _, err := sess.CommandRequest("rekey", m); err != nil {
		t.Fatalf("rekey: %v", err)
	}
	sess.Close()
	waitFor(t, 10*time.Second, "the rekeyed SA", func() bool {
		sa, ok := x.hub.saWith(s1)
		return ok && sa.IKEID != old.IKEID
	})
	rekeyed, _ := x.hub.saWith(s1)
	if rekeyed.RemoteID != old.RemoteID {
		t.Errorf("rekeyed SA with another identity: %s", rekeyed.RemoteID)
	}
	// A registration now: the hub forgets spoke 1, which registers again
	// (a purge from its server) and is authorised over the rekeyed SA.
	cleared := time.Now()
	var cr control.ClearResponse
	if err := x.hub.client.Post(context.Background(), control.PathClear, control.ClearRequest{Peer: e2eTunnel[0]}, &cr); err != nil || cr.Cleared == 0 {
		t.Fatalf("clear spoke 1 at the hub: %d, %v", cr.Cleared, err)
	}
	took := waitFor(t, 15*time.Second, "spoke 1 registered again after the rekey", func() bool { return x.registeredSince(0, cleared) })
	var accepted bool
	audit := readAudit(t, filepath.Join(p.dir, "audit-hub.jsonl"))
	for _, l := range audit {
		if l.NBMA == s1.String() && l.Event == "registration accepted" && l.IKEID != old.IKEID {
			accepted = true
		}
	}
	if !accepted {
		t.Errorf("no registration of spoke 1 accepted over the rekeyed SA (IKE id %s → %s); audit: %+v", old.IKEID, rekeyed.IKEID, audit)
	}
	t.Logf("IKE rekey: IKE id %s → %s; spoke 1 registered again over it %v after the hub forgot it", old.IKEID, rekeyed.IKEID, took.Round(time.Millisecond))

	// The hub deletes spoke 2's SA (clear crypto sa): spoke 2 brings it
	// back and registers again.
	cleared = time.Now()
	var cc control.ClearResponse
	if err := x.hub.client.Post(context.Background(), control.PathCryptoClear, control.CryptoClearRequest{Peer: s2}, &cc); err != nil {
		t.Fatalf("clear crypto sa %s: %v", s2, err)
	}
	took = waitFor(t, 15*time.Second, "spoke 2 back with a new SA and registered", func() bool {
		return x.hub.saUpWith(s2) && x.registeredSince(1, cleared)
	})
	t.Logf("SA deleted by the hub: spoke 2 registered again %v later", took.Round(time.Millisecond))

	// Spoke 1's charon killed: restarted, everything reloaded, registered
	// again at once.
	killed := time.Now()
	syscall.Kill(charonPID(t, filepath.Join(p.dir, "state-s1")), syscall.SIGKILL)
	took = waitFor(t, 15*time.Second, "spoke 1 registered again after its charon was killed", func() bool {
		return x.hub.saUpWith(s1) && x.registeredSince(0, killed)
	})
	t.Logf("spoke charon SIGKILL: registered again %v later", took.Round(time.Millisecond))
	if st := x.spokes[0].crypto().Stats; st == nil || st.Restarts == 0 {
		t.Errorf("spoke 1 did not count a charon restart: %+v", st)
	}

	// Spoke 2's certificate rotated in place (same file names, new key
	// and serial) and SIGHUP: spoke 2 sets its SA with the hub up again
	// with the new certificate, ends the old one and registers again; the
	// hub's binding carries the new serial, without anyone clearing SAs.
	before := x.hub.sasWith(s2)
	p.node("s2", "C=FI, O=Example, OU=GRE=10.0.0.12, OU=AS=65012, OU=NET=10.2.0.0/24, CN=s2", "")
	reloaded := time.Now()
	if err := x.spokes[1].proc.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	serial := serialOf(t, filepath.Join(p.dir, "s2.crt"))
	var since []auditLine // the hub's decisions on spoke 2 since the reload
	rotated := func() bool {
		since = since[:0]
		for _, l := range readAudit(t, filepath.Join(p.dir, "audit-hub.jsonl")) {
			if l.NBMA == s2.String() && !l.Time.Before(reloaded.Truncate(time.Millisecond)) {
				since = append(since, l)
			}
		}
		return x.registeredSince(1, reloaded) && len(since) > 0 &&
			since[len(since)-1].Event == "registration accepted" && since[len(since)-1].Serial == serial
	}
	start := time.Now()
	for ; !rotated(); time.Sleep(50 * time.Millisecond) {
		if time.Since(start) > 15*time.Second {
			t.Fatalf("spoke 2 not registered with its new certificate (serial %s) 15 s after SIGHUP; the hub's decisions on it since: %+v", serial, since)
		}
	}
	t.Logf("certificate rotated: spoke 2 registered with the new serial %v after SIGHUP", time.Since(start).Round(time.Millisecond))
	waitFor(t, 10*time.Second, "one SA left between the hub and spoke 2, not the old one", func() bool {
		now := x.hub.sasWith(s2)
		return len(now) == 1 && !slices.Contains(before, now[0])
	})

	testRotationRetried(t, x, p)
	testReloadAllOrNothing(t, x.spokes[0])
	testDebugCrypto(t, x)
}

// testDebugCrypto: the hub's debug crypto streams charon's IKE log over
// VICI; filtered by spoke 1, it carries spoke 1's lines and none of spoke
// 2's, while the unfiltered stream shows spoke 2's at the same time (so
// the filter had them to drop). Dead peer detection every second gives
// both SAs lines to log.
func testDebugCrypto(t *testing.T, x *e2e) {
	s1, s2 := nbmaOf(x, 0), nbmaOf(x, 1)
	sa1, ok1 := x.hub.saWith(s1)
	sa2, ok2 := x.hub.saWith(s2)
	if !ok1 || !ok2 {
		t.Fatalf("the hub has no SA with spoke 1 (%v) or spoke 2 (%v)", ok1, ok2)
	}
	about := func(l ipsec.LogLine, sa ipsec.SA, nbma netip.Addr) bool {
		return l.IKEID == sa.IKEID || strings.Contains(l.Msg, nbma.String()+"[") || strings.Contains(l.Msg, nbma.String()+" ")
	}
	var mu sync.Mutex
	var all, only1 []ipsec.LogLine
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	collect := func(peer netip.Addr, into *[]ipsec.LogLine) {
		go x.hub.client.CryptoLog(ctx, peer, func(l ipsec.LogLine) error {
			mu.Lock()
			*into = append(*into, l)
			mu.Unlock()
			return nil
		})
	}
	collect(netip.Addr{}, &all)
	collect(s1, &only1)
	waitFor(t, 15*time.Second, "charon's log lines about spoke 2 (unfiltered) and spoke 1 (filtered) on the hub", func() bool {
		mu.Lock()
		defer mu.Unlock()
		var saw2, saw1 bool
		for _, l := range all {
			saw2 = saw2 || about(l, sa2, s2)
		}
		for _, l := range only1 {
			saw1 = saw1 || about(l, sa1, s1)
		}
		return saw1 && saw2
	})
	cancel()
	mu.Lock()
	defer mu.Unlock()
	for _, l := range only1 {
		if about(l, sa2, s2) || !about(l, sa1, s1) {
			t.Errorf("debug crypto peer %s streamed a line that is not about it: %s", s1, l)
		}
	}
	t.Logf("debug crypto: %d lines in all, %d about spoke 1 (filtered), e.g. %s", len(all), len(only1), only1[0])
}

// testRotationRetried: spoke 1's certificate rotated by its files alone,
// half written first (the new certificate, the old key): the file watch
// refuses the set and keeps the one in force, then takes the whole set as
// soon as the key is there too — it was not given up after the first
// failure.
func testRotationRetried(t *testing.T, x *e2e, p *testPKI) {
	s1 := x.spokes[0]
	old := s1.crypto().Stats.Certificate
	if old == nil {
		t.Fatal("spoke 1 shows no certificate in force")
	}
	is, err := p.ca.IssueDN("C=FI, O=Example, OU=GRE=10.0.0.11, OU=AS=65011, OU=NET=10.1.0.0/24, CN=s1")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p.dir, "s1.crt"), is.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "spoke 1's file watch to refuse the half-written set", func() bool {
		return strings.Contains(s1.proc.Output(), "credential files changed but cannot be loaded yet")
	})
	if cur := s1.crypto().Stats.Certificate; cur == nil || cur.Serial != old.Serial {
		t.Fatalf("a half-written set was taken: certificate in force %+v, was %+v", cur, old)
	}
	if err := os.WriteFile(filepath.Join(p.dir, "s1.key"), is.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	serial := is.Cert.SerialNumber.Text(16)
	took := waitFor(t, 15*time.Second, "the whole new set in force on spoke 1", func() bool {
		cur := s1.crypto().Stats.Certificate
		return cur != nil && cur.Serial == serial
	})
	t.Logf("half-written rotation refused, then the whole set taken %v after the key was written", took.Round(time.Millisecond))
	waitFor(t, 15*time.Second, "the hub to accept spoke 1 with its new serial", func() bool {
		for _, l := range readAudit(t, filepath.Join(p.dir, "audit-hub.jsonl")) {
			if l.NBMA == nbmaOf(x, 0).String() && l.Event == "registration accepted" && l.Serial == serial {
				return true
			}
		}
		return false
	})
}

// testReloadAllOrNothing: the control API's reload on a live spoke — a
// dry run says what would change and changes nothing, an invalid file is
// refused with its reasons, and a valid one is applied.
func testReloadAllOrNothing(t *testing.T, d *daemonNode) {
	ctx := context.Background()
	holding := func() int {
		var st control.Status
		d.get(control.PathStatus, &st)
		return st.NHRP.HoldingTime
	}
	if h := holding(); h != 60 {
		t.Fatalf("spoke 1's holding time %d, want 60 before the reload", h)
	}
	b, err := os.ReadFile(d.config)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(d.config, []byte(strings.Replace(string(b), "holding_time: 60", "holding_time: 90", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	var rr control.ReloadResponse
	if err := d.client.Post(ctx, control.PathReload, control.ReloadRequest{DryRun: true}, &rr); err != nil || !rr.DryRun ||
		!slices.Contains(rr.Changes, "holding time 1m0s → 1m30s") {
		t.Fatalf("dry run: %+v %v", rr, err)
	}
	if h := holding(); h != 60 {
		t.Errorf("a dry run changed the holding time to %d", h)
	}
	bad := strings.Replace(string(b), "holding_time: 60", "holding_time: 90\n  mtu: 10", 1)
	if err := os.WriteFile(d.config, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	err = d.client.Post(ctx, control.PathReload, control.ReloadRequest{}, &rr)
	var api *control.APIError
	if !errors.As(err, &api) || api.Status != 409 || len(api.Reasons) != 1 || !strings.Contains(api.Reasons[0], "tunnel.mtu: 10 out of range") {
		t.Fatalf("invalid file: %v", err)
	}
	if h := holding(); h != 60 {
		t.Errorf("a refused reload changed the holding time to %d", h)
	}
	if err := os.WriteFile(d.config, []byte(strings.Replace(string(b), "holding_time: 60", "holding_time: 90", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	rr = control.ReloadResponse{}
	if err := d.client.Post(ctx, control.PathReload, control.ReloadRequest{}, &rr); err != nil || rr.DryRun {
		t.Fatalf("reload: %+v %v", rr, err)
	}
	if h := holding(); h != 90 {
		t.Errorf("holding time %d after the reload, want 90", h)
	}
}

// serialOf returns a certificate file's serial number in hex, as the
// audit log writes it.
func serialOf(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber.Text(16)
}
