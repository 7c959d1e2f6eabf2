package firewall

import (
	"context"
	"errors"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opendmvpn/dmvpn/internal/leakcheck"
)

func hubFacts() Facts { return hubPolicy().Facts }

// cfgWith returns the hub's firewall section with n user rules, labelled.
func cfgWith(n int) Config {
	c := hubPolicy().Config
	c.Rules = nil
	for i := 0; i < n; i++ {
		c.Rules = append(c.Rules, UserRule{From: ZoneLAN, To: ZoneLocal, Protocol: ProtoTCP, Ports: []uint16{uint16(2000 + i)}, Action: VerdictAccept})
	}
	return c
}

// rollbacks records what the manager hands back on rollback.
type rollbacks struct {
	mu   sync.Mutex
	srcs []any
}

func (r *rollbacks) fn(src any) { r.mu.Lock(); r.srcs = append(r.srcs, src); r.mu.Unlock() }
func (r *rollbacks) get() []any {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]any(nil), r.srcs...)
}

func userRules(rs *Ruleset) int {
	n := 0
	for _, c := range rs.Chains {
		for _, r := range c.Rules {
			if len(r.Name) > 5 && r.Name[:5] == "user_" {
				n++
			}
		}
	}
	return n
}

// Unconfirmed, an apply rolls back to the last confirmed configuration at
// its deadline, and the caller gets that configuration's source back.
func TestManagerRollsBackUnconfirmed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tbl := NewMemTable()
		var rb rollbacks
		m := NewManager(tbl, hubFacts(), nil, WithRollback(rb.fn))
		ctx := context.Background()
		if _, err := m.Apply(ctx, cfgWith(1), "A", 0); err != nil {
			t.Fatal(err)
		}
		res, err := m.Apply(ctx, cfgWith(2), "B", 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if want := time.Now().Add(30 * time.Second); !res.ConfirmBy.Equal(want) {
			t.Errorf("confirm by %v, want %v", res.ConfirmBy, want)
		}
		// A second apply while pending rolls back to A too, not to B.
		if _, err := m.Apply(ctx, cfgWith(3), "C", 30*time.Second); err != nil {
			t.Fatal(err)
		}
		time.Sleep(29 * time.Second)
		synctest.Wait()
		if cur, _ := tbl.Current(); userRules(cur) != 3 {
			t.Fatalf("before the deadline %d user rules in force, want 3", userRules(cur))
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		cur, _ := tbl.Current()
		if userRules(cur) != 1 {
			t.Fatalf("after the deadline %d user rules in force, want 1 (A)", userRules(cur))
		}
		if got := rb.get(); len(got) != 1 || got[0] != "A" {
			t.Errorf("rollback handed back %v, want [A]", got)
		}
		if _, src := m.Current(); src != "A" {
			t.Errorf("current source %v", src)
		}
		st := m.Stats()
		if st.Rollbacks != 1 || st.RollbackLate != 0 {
			t.Errorf("stats %+v", st)
		}
		if err := m.Confirm(); !errors.Is(err, ErrNothingPending) {
			t.Errorf("confirm after rollback: %v", err)
		}
		if err := m.Close(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

// Confirmed, an apply stays.
func TestManagerConfirm(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tbl := NewMemTable()
		var rb rollbacks
		m := NewManager(tbl, hubFacts(), nil, WithRollback(rb.fn))
		ctx := context.Background()
		m.Apply(ctx, cfgWith(1), "A", 0)
		m.Apply(ctx, cfgWith(2), "B", 10*time.Second)
		time.Sleep(5 * time.Second)
		if err := m.Confirm(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Minute)
		synctest.Wait()
		if cur, _ := tbl.Current(); userRules(cur) != 2 {
			t.Errorf("%d user rules in force, want 2 (B)", userRules(cur))
		}
		if len(rb.get()) != 0 || m.Stats().Rollbacks != 0 {
			t.Error("rolled back after confirm")
		}
		// An apply without confirmation ends a pending one.
		m.Apply(ctx, cfgWith(3), "C", 10*time.Second)
		m.Apply(ctx, cfgWith(4), "D", 0)
		time.Sleep(time.Minute)
		synctest.Wait()
		if cur, _ := tbl.Current(); userRules(cur) != 4 {
			t.Errorf("%d user rules in force, want 4 (D)", userRules(cur))
		}
		m.Close(ctx)
	})
}

// The first apply unconfirmed removes the table again: nothing was in
// force before it.
func TestManagerFirstApplyRollsBackToNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tbl := NewMemTable()
		var rb rollbacks
		m := NewManager(tbl, hubFacts(), nil, WithRollback(rb.fn))
		if _, err := m.Apply(context.Background(), cfgWith(1), "A", time.Second); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if cur, _ := tbl.Current(); cur != nil {
			t.Error("table still there")
		}
		if got := rb.get(); len(got) != 1 || got[0] != nil {
			t.Errorf("rollback handed back %v, want [nil]", got)
		}
		if st := m.Status(context.Background()); st.Active {
			t.Error("status active")
		}
	})
}

// A refused configuration changes nothing, and a pending apply stays
// pending.
func TestManagerRefusedChangesNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tbl := NewMemTable()
		m := NewManager(tbl, hubFacts(), nil)
		ctx := context.Background()
		m.Apply(ctx, cfgWith(1), "A", 0)
		m.Apply(ctx, cfgWith(2), "B", 10*time.Second)
		tbl.Refuse("user_3", syscall.EOPNOTSUPP)
		_, err := m.Apply(ctx, cfgWith(3), "C", 0)
		var re *RefusedError
		if !errors.As(err, &re) || re.Rule != "user_3" {
			t.Fatalf("error %v, want user_3 refused", err)
		}
		if cur, _ := tbl.Current(); userRules(cur) != 2 {
			t.Errorf("%d user rules in force, want 2 (B)", userRules(cur))
		}
		bad := cfgWith(1)
		bad.Rules[0].Action = "log"
		if _, err := m.Apply(ctx, bad, "D", 0); err == nil {
			t.Error("invalid configuration applied")
		}
		if st := m.Stats(); st.Failures != 2 || st.LastError == "" {
			t.Errorf("stats %+v", st)
		}
		time.Sleep(11 * time.Second)
		synctest.Wait()
		if cur, _ := tbl.Current(); userRules(cur) != 1 {
			t.Errorf("%d user rules in force after the deadline, want 1 (A)", userRules(cur))
		}
		m.Close(ctx)
	})
}

// New facts rebuild the rules in force; a rollback uses them too.
func TestManagerSetFacts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tbl := NewMemTable()
		f := spokePolicy().Facts
		f.IPsecTUN = ""
		m := NewManager(tbl, f, nil)
		ctx := context.Background()
		cfg := spokePolicy().Config
		m.Apply(ctx, cfg, "A", 0)
		if cur, _ := tbl.Current(); hasRuleNamed(cur, "in_gre_ipsec") {
			t.Fatal("GRE accepted before charon's TUN is known")
		}
		m.Apply(ctx, cfg, "B", 5*time.Second)
		f.IPsecTUN = "ipsec1"
		if err := m.SetFacts(ctx, f); err != nil {
			t.Fatal(err)
		}
		time.Sleep(6 * time.Second)
		synctest.Wait()
		cur, _ := tbl.Current()
		r, _, ok := cur.Rule("in_gre_ipsec")
		if !ok || r.Match[0].Names[0] != "ipsec1" {
			t.Errorf("after the rollback GRE is not taken from ipsec1: %+v", r)
		}
		m.Close(ctx)
	})
}

func hasRuleNamed(rs *Ruleset, name string) bool {
	_, _, ok := rs.Rule(name)
	return ok
}

// Status lists every rule with its counter.
func TestManagerStatus(t *testing.T) {
	tbl := NewMemTable()
	m := NewManager(tbl, hubFacts(), nil)
	ctx := context.Background()
	if _, err := m.Apply(ctx, cfgWith(1), "A", 0); err != nil {
		t.Fatal(err)
	}
	tbl.Count("in_gre_clear", 3, 300)
	st := m.Status(ctx)
	if !st.Active || st.Tunnel != "gre1" || st.IPsec != IPsecKernel || len(st.Internet) != 2 {
		t.Errorf("status %+v", st)
	}
	found := false
	for _, c := range st.Chains {
		for _, r := range c.Rules {
			if r.Name == "in_gre_clear" {
				found = r.Packets == 3 && r.Bytes == 300 && r.Rule == "meta l4proto gre drop" && c.Policy == "drop"
			}
		}
	}
	if !found {
		t.Errorf("in_gre_clear not listed with its counter: %+v", st.Chains)
	}
	m.Close(ctx)
	if st := m.Status(ctx); st.Active {
		t.Error("active after Close")
	}
}

func TestManagerNoLeak(t *testing.T) {
	leakcheck.Check(t)
	m := NewManager(NewMemTable(), hubFacts(), nil)
	m.Apply(context.Background(), cfgWith(1), "A", time.Hour)
	m.Close(context.Background())
}
