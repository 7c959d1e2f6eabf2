package metrics

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/failover"
)

type fakeUplinks struct{}

func (fakeUplinks) Status(context.Context) ([]failover.UplinkStatus, error) {
	return []failover.UplinkStatus{
		{Name: "isp1", Interface: "wan0", State: "down", Transitions: 3, Rounds: 100,
			Hosts: []failover.HostStatus{{Address: netip.MustParseAddr("192.0.2.253"), Sent: 120, Received: 80, Loss: 25, SRTT: 2 * time.Millisecond}}},
		{Name: "isp2", Interface: "wan1", State: "up", Default: true, Active: true, Transitions: 0, Rounds: 100},
	}, nil
}
func (fakeUplinks) NBMA() []netip.Addr { return nil }

type uplinksSource struct {
	fakeSource
	u control.Uplinks
}

func (s uplinksSource) Uplinks() control.Uplinks { return s.u }

func TestUplinkMetrics(t *testing.T) {
	fams, err := New(uplinksSource{fakeSource: fakeSource{eng: fakeEngine{}}, u: fakeUplinks{}}).Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	value := func(name string, labels map[string]string) (float64, bool) {
		f := family(fams, name)
		if f == nil {
			return 0, false
		}
	next:
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if v, ok := labels[l.GetName()]; ok && v != l.GetValue() {
					continue next
				}
			}
			switch {
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue(), true
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue(), true
			}
		}
		return 0, false
	}
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"dmvpn_uplink_up", map[string]string{"uplink": "isp1", "interface": "wan0"}, 0},
		{"dmvpn_uplink_up", map[string]string{"uplink": "isp2"}, 1},
		{"dmvpn_uplink_default", map[string]string{"uplink": "isp2"}, 1},
		{"dmvpn_uplink_active", map[string]string{"uplink": "isp1"}, 0},
		{"dmvpn_uplink_transitions_total", map[string]string{"uplink": "isp1"}, 3},
		{"dmvpn_uplink_rtt_seconds", map[string]string{"uplink": "isp1", "host": "192.0.2.253"}, 0.002},
		{"dmvpn_uplink_loss_ratio", map[string]string{"uplink": "isp1", "host": "192.0.2.253"}, 0.25},
		{"dmvpn_uplink_probes_total", map[string]string{"uplink": "isp1", "direction": "received"}, 80},
	} {
		if got, ok := value(tc.name, tc.labels); !ok || got != tc.want {
			t.Errorf("%s%v = %v (found %v), want %v", tc.name, tc.labels, got, ok, tc.want)
		}
	}
	// Without uplinks, no family.
	fams, _ = New(fakeSource{eng: fakeEngine{}}).Registry().Gather()
	if family(fams, "dmvpn_uplink_up") != nil {
		t.Error("uplink metrics without uplinks")
	}
}
