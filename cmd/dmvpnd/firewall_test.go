package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/daemon/config"
	"github.com/opendmvpn/dmvpn/firewall"
)

const fwSection = `firewall:
  zones:
    internet: [eth0]
`

// fwNode is a fake node with a real firewall manager on an in-memory
// table, wired as the daemon wires it.
type fwNode struct {
	fakeNode
	m *firewall.Manager
}

func (n *fwNode) Firewall() *firewall.Manager { return n.m }
func (n *fwNode) ApplyFirewall(ctx context.Context, fw *firewall.Config, src any, confirm time.Duration) (firewall.Result, error) {
	return n.m.Apply(ctx, *fw, src, confirm)
}

// An apply puts the file's section in force and into the running
// configuration; unconfirmed, both come back by themselves.
func TestFirewallApplyRollsBackRunningConfig(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "dmvpnd.yaml")
		if err := os.WriteFile(path, []byte(spokeFile+fwSection), 0o644); err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(path)
		if err != nil {
			t.Fatal(err)
		}
		tbl := firewall.NewMemTable()
		var a *App
		n := &fwNode{}
		n.m = firewall.NewManager(tbl, firewall.Facts{Tunnel: "gre1", TunnelMTU: 1400}, nil,
			firewall.WithRollback(func(src any) { a.firewallRolledBack(src) }))
		ctx := context.Background()
		if _, err := n.m.Apply(ctx, *cfg.Firewall.FirewallConfig(), nil, 0); err != nil {
			t.Fatal(err)
		}
		a = newApp(path, cfg, config.Runtime{}, n, zap.NewNop(), zap.NewAtomicLevel())
		fw := a.Firewall()
		if fw == nil {
			t.Fatal("no firewall")
		}
		before := string(a.RunningConfig())
		rewrite(t, path, "holding_time: 600", "holding_time: 900")
		rewrite(t, path, "internet: [eth0]", "internet: [eth0]\n  rules:\n    - {from: internet, to: local, protocol: tcp, ports: 22, action: accept}")
		text, err := fw.Translate(ctx, false)
		if err != nil || !strings.Contains(text, `counter name "user_1"`) {
			t.Fatalf("translate: %v\n%s", err, text)
		}
		res, err := fw.Apply(ctx, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Ignored) != 1 {
			t.Errorf("the holding time change is not reported as ignored: %v", res.Ignored)
		}
		if running := string(a.RunningConfig()); !strings.Contains(running, "ports:") || !strings.Contains(running, "holding_time: 600") {
			t.Errorf("running configuration after the apply:\n%s", running)
		}
		time.Sleep(31 * time.Second)
		synctest.Wait()
		if after := string(a.RunningConfig()); after != before {
			t.Errorf("after the rollback the running configuration is\n%s\nwant\n%s", after, before)
		}
		if cur, _ := tbl.Current(); hasRule(cur, "user_1") {
			t.Error("the unconfirmed rule is still in force")
		}
		// Applied again and confirmed, it stays.
		if _, err := fw.Apply(ctx, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		if err := fw.Confirm(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Minute)
		synctest.Wait()
		if cur, _ := tbl.Current(); !hasRule(cur, "user_1") || !strings.Contains(string(a.RunningConfig()), "ports:") {
			t.Error("a confirmed apply rolled back")
		}
		n.m.Close(ctx)
	})
}

func hasRule(rs *firewall.Ruleset, name string) bool {
	_, _, ok := rs.Rule(name)
	return ok
}
