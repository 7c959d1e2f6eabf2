package ctl

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/failover"
)

// fakeUplinks is a node's uplink monitor with a fixed status: isp1 down
// (cut), isp2 carrying the default.
type fakeUplinks struct{}

func testUplinks() []failover.UplinkStatus {
	return []failover.UplinkStatus{
		{Name: "isp1", Interface: "wan0", State: "down", Since: t0.Add(-90 * time.Second), Reason: "3 rounds in a row with fewer than 1 of 2 probe hosts answering (silent: 192.0.2.253, 203.0.113.253)",
			Address: netip.MustParseAddr("198.51.100.1"), Gateway: netip.MustParseAddr("198.51.100.14"), Link: true, Table: 101, Mark: 0x100,
			Weight: 1, Preference: 0, Interval: 250 * time.Millisecond, Timeout: 200 * time.Millisecond, Rounds: 1200, Transitions: 1,
			Hosts: []failover.HostStatus{
				{Address: netip.MustParseAddr("192.0.2.253"), Sent: 1500, Received: 900, Loss: 100, RTT: 210 * time.Microsecond, SRTT: 250 * time.Microsecond},
				{Address: netip.MustParseAddr("203.0.113.253"), Sent: 3600, Received: 0, Loss: 100},
			}},
		{Name: "isp2", Interface: "wan1", State: "up", Since: t0.Add(-time.Hour), Reason: "starting",
			Address: netip.MustParseAddr("203.0.113.65"), Gateway: netip.MustParseAddr("203.0.113.78"), Link: true, Table: 102, Mark: 0x200,
			Weight: 1, Preference: 1, Interval: 250 * time.Millisecond, Timeout: 200 * time.Millisecond, Rounds: 1200, Default: true, Active: true,
			Hosts: []failover.HostStatus{{Address: netip.MustParseAddr("192.0.2.253"), Up: true, Sent: 1200, Received: 1200, RTT: 310 * time.Microsecond, SRTT: 300 * time.Microsecond}}},
	}
}

func (fakeUplinks) Status(context.Context) ([]failover.UplinkStatus, error) {
	return testUplinks(), nil
}
func (fakeUplinks) NBMA() []netip.Addr {
	return []netip.Addr{netip.MustParseAddr("203.0.113.65"), netip.MustParseAddr("198.51.100.1")}
}

// uplinksDaemon is fakeDaemon with uplinks; a nil u is none configured.
type uplinksDaemon struct {
	fakeDaemon
	u control.Uplinks
}

func (d uplinksDaemon) Uplinks() control.Uplinks { return d.u }

func TestPrintUplinks(t *testing.T) {
	r := control.UplinksResponse{Enabled: true, NBMA: fakeUplinks{}.NBMA(), Uplinks: testUplinks()}
	var b bytes.Buffer
	printUplinks(&b, r, t0)
	want := `NBMA address 203.0.113.65 (uplink isp2), default route via isp2

Uplink  Interface  State  Since     Default  Weight  Pref  Address       Gateway        Table  Changes  Reason
isp1    wan0       down   00:01:30  -        1       0     198.51.100.1  198.51.100.14  101    1        3 rounds in a row with fewer than 1 of 2 probe hosts answering (silent: 192.0.2.253, 203.0.113.253)
isp2    wan1       up     01:00:00  active   1       1     203.0.113.65  203.0.113.78   102    0        starting

isp1 probes every 250ms (timeout 200ms), 1200 rounds:
  Host           Last    Sent  Replies  Loss    RTT     SRTT
  192.0.2.253    silent  1500  900      100.0%  0.21ms  0.25ms
  203.0.113.253  silent  3600  0        100.0%  -       -

isp2 probes every 250ms (timeout 200ms), 1200 rounds:
  Host         Last      Sent  Replies  Loss  RTT     SRTT
  192.0.2.253  answered  1200  1200     0.0%  0.31ms  0.30ms
`
	if d := cmp.Diff(want, b.String()); d != "" {
		t.Errorf("show uplinks (-want +got):\n%s", d)
	}
}

func TestShowUplinks(t *testing.T) {
	run := serve(t, uplinksDaemon{u: fakeUplinks{}})
	out, errb, code := run("sh upl json")
	var r control.UplinksResponse
	if err := json.Unmarshal([]byte(out), &r); err != nil || code != 0 || errb != "" || !r.Enabled || len(r.Uplinks) != 2 || r.Uplinks[1].Hosts[0].SRTT != 300*time.Microsecond {
		t.Errorf("show uplinks json: exit %d, %v, %+v", code, err, r)
	}
	for _, d := range []control.Daemon{fakeDaemon{}, uplinksDaemon{}} {
		out, errb, code := serve(t, d)("sh uplinks")
		if code != 0 || errb != "" || out != "% no uplinks configured (the uplinks section): the kernel's routes are left as they are\n" {
			t.Errorf("show uplinks without uplinks: exit %d, %q, %q", code, out, errb)
		}
	}
}
