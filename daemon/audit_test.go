package daemon

import (
	"bufio"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/opendmvpn/dmvpn/internal/auditlimit"
	"github.com/opendmvpn/dmvpn/ipsec"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// fakeClock is a virtual clock the tests advance by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

// auditDaemon is a daemon with only what refusalAudit needs: its log
// observed and its limiter on a virtual clock.
func auditDaemon() (*Daemon, *observer.ObservedLogs, *fakeClock) {
	core, logs := observer.New(zap.DebugLevel)
	c := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	d := &Daemon{log: zap.New(core), refusals: auditlimit.New(auditlimit.Config{Now: c.now})}
	return d, logs, c
}

// refusedPurge is the refusal of a purge from nbma whose reason names
// per-packet addresses, as the engine's does.
func refusedPurge(nbma netip.Addr, claimed string) nhrp.Event {
	return nhrp.Event{Kind: nhrp.EventPacketRefused, Refusal: nhrp.RefusedPurge, NBMA: nbma,
		Proto: netip.MustParsePrefix("10.0.0.0/8"), Reason: "1 entries under 10.0.0.0/8 are not " + claimed + "'s"}
}

func source(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{100, 64 + byte(i>>16), byte(i >> 8), byte(i)})
}

// TestAuditRefusalsBounded: 50,000 refused packets from 50,000 sources in
// 5 s give at most burst + rate × 5 s warning lines (one per packet
// before: 50,000), then one summary line that accounts for every other
// refusal, by check.
func TestAuditRefusalsBounded(t *testing.T) {
	d, logs, c := auditDaemon()
	obs := d.refusalAudit(nil)
	const n = 50000
	const over = 5 * time.Second
	for i := range n {
		obs.Event(refusedPurge(source(i), source(i).String()))
		c.advance(over / n)
	}
	lines := logs.FilterMessage("NHRP packet refused").Len()
	if limit := auditlimit.DefaultBurst + int(auditlimit.DefaultRate*over.Seconds()); lines > limit || lines == 0 {
		t.Fatalf("%d refusals from %d sources in %s: %d lines, want 1 to %d", n, n, over, lines, limit)
	}
	if logs.Len() != lines {
		t.Fatalf("a summary before its 10 s window passed: %d lines, %d refusals", logs.Len(), lines)
	}
	c.advance(auditlimit.DefaultSummary)
	obs.Event(refusedPurge(source(0), "10.9.9.9"))
	all := logs.All()
	if len(all) != lines+2 {
		t.Fatalf("after 10 s: %d lines, want the %d refusals, one more and the summary", len(all), lines)
	}
	sum := all[len(all)-1].ContextMap()
	if got := sum["suppressed"]; got != uint64(n-lines) {
		t.Errorf("summary: %v suppressed, want %d (%d refusals, %d lines)", got, n-lines, n, lines)
	}
	if got := d.RefusalAuditSuppressed()[nhrp.RefusedPurge.String()]; got != uint64(n-lines) {
		t.Errorf("RefusalAuditSuppressed: %d for %s, want %d", got, nhrp.RefusedPurge, n-lines)
	}
	t.Logf("%d refusals from %d sources over %s: %d lines; summary %q", n, n, over, lines, all[len(all)-1].Message)
}

// TestAuditRefusalOneSourceOneLine: one source whose packets give reasons
// that differ each time (the addresses it claims) gets one line a second
// per check, not one per reason.
func TestAuditRefusalOneSourceOneLine(t *testing.T) {
	d, logs, c := auditDaemon()
	obs := d.refusalAudit(nil)
	from := netip.MustParseAddr("198.51.100.7")
	for i := range 1000 {
		obs.Event(refusedPurge(from, source(i).String()))
		c.advance(time.Millisecond / 2)
	}
	if got := logs.Len(); got != 1 {
		t.Fatalf("1,000 refusals with different reasons from one source in 0.5 s: %d lines, want 1", got)
	}
	obs.Event(nhrp.Event{Kind: nhrp.EventPacketRefused, Refusal: nhrp.RefusedRequestSource, NBMA: from})
	if got := logs.Len(); got != 2 {
		t.Fatalf("another check of the same source: %d lines, want 2", got)
	}
	c.advance(time.Second)
	obs.Event(refusedPurge(from, "10.1.1.1"))
	if got := logs.Len(); got != 3 {
		t.Fatalf("a second later: %d lines, want 3", got)
	}
	if got := d.RefusalAuditSuppressed()[nhrp.RefusedPurge.String()]; got != 999 {
		t.Errorf("suppressed %d purge refusal lines, want 999", got)
	}
}

// TestAuditRefusalSummaryOnStop: the lines suppressed since the last
// summary are reported when the daemon stops, however short the window.
func TestAuditRefusalSummaryOnStop(t *testing.T) {
	d, logs, _ := auditDaemon()
	obs := d.refusalAudit(nil)
	from := netip.MustParseAddr("198.51.100.7")
	for range 5 {
		obs.Event(refusedPurge(from, "10.1.1.1"))
	}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() { defer close(done); d.reportRefusals(nil, time.Hour, stop) }()
	close(stop)
	<-done
	all := logs.All()
	if len(all) != 2 || all[1].ContextMap()["suppressed"] != uint64(4) {
		t.Fatalf("lines %v, want one refusal and a summary of 4", all)
	}
}

// TestAuditRefusalIPsecBounded: with IPsec the lines go to the audit
// stream through the manager, behind the same limiter: one peer varying
// the address it claims gets one line a second, 10,000 sources at most
// burst + rate × elapsed, and the summary is in the audit stream too.
func TestAuditRefusalIPsecBounded(t *testing.T) {
	dir := t.TempDir()
	var files []string
	for _, f := range []string{"ca.pem", "cert.pem", "key.pem"} {
		p := filepath.Join(dir, f)
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		files = append(files, p)
	}
	auditLog := filepath.Join(dir, "audit.log")
	mgr, err := ipsec.New(ipsec.Config{CACerts: files[:1], Cert: files[1], Key: files[2], AuditLog: auditLog}, ipsec.ModeKernel, true, nil, ipsec.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	d, logs, c := auditDaemon()
	obs := d.refusalAudit(mgr)
	peer := netip.MustParseAddr("198.51.100.7")
	for i := range 1000 {
		obs.Event(refusedPurge(peer, source(i).String()))
		c.advance(time.Millisecond)
	}
	const n = 10000
	for i := range n {
		obs.Event(refusedPurge(source(i), source(i).String()))
		c.advance(time.Second / n)
	}
	c.advance(auditlimit.DefaultSummary)
	obs.Event(refusedPurge(peer, "10.1.1.1"))

	events := map[string]int{}
	var summary map[string]any
	f, err := os.Open(auditLog)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var line map[string]any
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		ev, _ := line["event"].(string)
		events[ev]++
		if ev == "packet refusals suppressed" {
			summary = line
		}
	}
	if logs.Len() != 0 {
		t.Errorf("with IPsec, %d lines in the log; want them in the audit stream", logs.Len())
	}
	refused := events["packet refused"]
	// 1 s of the peer (its first line, then the global budget for the
	// 10,000 sources over 1 s), the last refusal.
	if limit := 1 + auditlimit.DefaultBurst + auditlimit.DefaultRate*2 + 1; refused > limit || refused < 3 {
		t.Fatalf("%d refusals: %d audit lines, want 3 to %d", 1000+n+1, refused, limit)
	}
	if summary == nil || summary["suppressed"] != float64(1000+n+1-refused) {
		t.Fatalf("summary %v, want %d suppressed", summary, 1000+n+1-refused)
	}
	t.Logf("%d refusals: %d audit lines, then %q", 1000+n+1, refused, summary["summary"])
}
