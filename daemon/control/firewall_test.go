package control

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/firewall"
	"github.com/opendmvpn/dmvpn/gre"
)

// fakeFirewall is a Firewall over a manager of an in-memory table; the
// "file" is next.
type fakeFirewall struct {
	m    *firewall.Manager
	next firewall.Config
}

func (f *fakeFirewall) Status(ctx context.Context) firewall.Status { return f.m.Status(ctx) }
func (f *fakeFirewall) Apply(ctx context.Context, confirm time.Duration) (FirewallApplyResponse, error) {
	res, err := f.m.Apply(ctx, f.next, "file", confirm)
	return FirewallApplyResponse{Result: res, Ignored: []string{"node name"}}, err
}
func (f *fakeFirewall) Confirm() error { return f.m.Confirm() }
func (f *fakeFirewall) Translate(ctx context.Context, running bool) (string, error) {
	rs, err := f.m.Translate(f.next)
	if err != nil {
		return "", err
	}
	return rs.Text(), nil
}

// fwDaemon is a node with a firewall and an ebpf-like data plane.
type fwDaemon struct {
	fakeDaemon
	fw Firewall
}

func (d *fwDaemon) Firewall() Firewall { return d.fw }
func (d *fwDaemon) Counters() (gre.Counters, bool) {
	return gre.Counters{FastPath: map[string]uint64{"rx_passed": 7}, Drops: map[string]uint64{"ingress": 3}}, true
}

func TestFirewallEndpoints(t *testing.T) {
	tbl := firewall.NewMemTable()
	facts := firewall.Facts{Tunnel: "gre1", TunnelMTU: 1400, IPsec: firewall.IPsecKernel}
	m := firewall.NewManager(tbl, facts, nil)
	cfg := firewall.Config{Internet: []string{"eth0"}}
	ctx := context.Background()
	if _, err := m.Apply(ctx, cfg, "start", 0); err != nil {
		t.Fatal(err)
	}
	defer m.Close(ctx)
	tbl.Count("in_gre_clear", 2, 200)
	next := cfg
	next.Rules = []firewall.UserRule{{From: "lan", To: "local", Protocol: firewall.ProtoTCP, Ports: []uint16{22}, Action: "accept"}}
	d := &fwDaemon{fw: &fakeFirewall{m: m, next: next}}
	_, c, _ := serve(t, d)

	var st FirewallResponse
	if err := c.Get(ctx, PathFirewall, &st); err != nil {
		t.Fatal(err)
	}
	if !st.Enabled || st.Policy == nil || !st.Policy.Active || st.Dataplane == nil || !st.Dataplane.FastPath || st.Dataplane.IngressRefused != 3 {
		t.Fatalf("status %+v", st)
	}
	found := false
	for _, ch := range st.Policy.Chains {
		for _, r := range ch.Rules {
			found = found || r.Name == "in_gre_clear" && r.Packets == 2
		}
	}
	if !found {
		t.Error("in_gre_clear's counter not in the status")
	}

	var tr FirewallTranslateResponse
	if err := c.Get(ctx, PathFirewallTranslate, &tr); err != nil || !strings.Contains(tr.Text, `counter name "user_1"`) {
		t.Fatalf("translate: %v\n%s", err, tr.Text)
	}

	var ar FirewallApplyResponse
	if err := c.Post(ctx, PathFirewallApply, FirewallApplyRequest{Confirm: time.Minute}, &ar); err != nil {
		t.Fatal(err)
	}
	if ar.ConfirmBy.IsZero() || ar.Rules == 0 || len(ar.Ignored) != 1 {
		t.Errorf("apply %+v", ar)
	}
	if err := c.Post(ctx, PathFirewallConfirm, struct{}{}, &struct{}{}); err != nil {
		t.Fatal(err)
	}
	var api *APIError
	if err := c.Post(ctx, PathFirewallConfirm, struct{}{}, &struct{}{}); !errors.As(err, &api) || api.Status != http.StatusConflict {
		t.Errorf("second confirm: %v", err)
	}
	if err := c.Post(ctx, PathFirewallApply, FirewallApplyRequest{Confirm: -time.Second}, &ar); !errors.As(err, &api) || api.Status != http.StatusBadRequest {
		t.Errorf("negative confirmation time: %v", err)
	}
}

func TestFirewallOff(t *testing.T) {
	_, c, _ := serve(t, &fakeDaemon{})
	ctx := context.Background()
	var st FirewallResponse
	if err := c.Get(ctx, PathFirewall, &st); err != nil || st.Enabled {
		t.Fatalf("status %+v, %v", st, err)
	}
	var api *APIError
	if err := c.Post(ctx, PathFirewallApply, FirewallApplyRequest{}, &FirewallApplyResponse{}); !errors.As(err, &api) || !strings.Contains(api.Msg, "firewall is off") {
		t.Errorf("apply on a node without firewall: %v", err)
	}
}
