package failover

import (
	"context"
	"net/netip"
	"slices"
	"time"
)

// UplinkStatus is an uplink as the shell and the control API show it.
type UplinkStatus struct {
	Name      string     `json:"name"`
	Interface string     `json:"interface"`
	State     string     `json:"state"`
	Since     time.Time  `json:"since"`
	Reason    string     `json:"reason"`
	Address   netip.Addr `json:"address,omitzero"`
	Gateway   netip.Addr `json:"gateway,omitzero"`
	// Link says the interface is up with carrier.
	Link       bool   `json:"link"`
	Table      int    `json:"table"`
	Mark       uint32 `json:"mark"`
	Weight     int    `json:"weight"`
	Preference int    `json:"preference"`
	// Default: the uplink carries the main table's default route; Active:
	// its address is this node's NBMA address.
	Default     bool          `json:"default"`
	Active      bool          `json:"active"`
	Interval    time.Duration `json:"interval"`
	Timeout     time.Duration `json:"timeout"`
	Rounds      uint64        `json:"rounds"`
	Transitions uint64        `json:"transitions"`
	// ProbeError says why the uplink cannot be probed, if it cannot.
	ProbeError string       `json:"probe_error,omitempty"`
	Hosts      []HostStatus `json:"hosts"`
}

// HostStatus is one probe host of an uplink.
type HostStatus struct {
	Address netip.Addr `json:"address"`
	// Up: it answered the last round.
	Up       bool   `json:"up"`
	Sent     uint64 `json:"sent"`
	Received uint64 `json:"received"`
	// Loss is the share of the last rounds (up to 64) it did not answer,
	// in percent.
	Loss float64 `json:"loss_percent"`
	// RTT is the round trip of its last reply, SRTT the smoothed one.
	RTT       time.Duration `json:"rtt"`
	SRTT      time.Duration `json:"srtt"`
	LastReply time.Time     `json:"last_reply,omitzero"`
}

// Status returns the state of every uplink, in configuration order.
func (m *Monitor) Status(ctx context.Context) ([]UplinkStatus, error) {
	var out []UplinkStatus
	err := m.do(ctx, func() {
		applied := m.applied.Load()
		for _, u := range m.ups {
			p := u.p
			s := UplinkStatus{
				Name: p.cfg.Name, Interface: p.cfg.Interface, State: p.state.String(), Since: p.since, Reason: p.reason,
				Address: u.link.Addr.Addr(), Gateway: u.gateway, Link: u.link.Up, Table: p.cfg.Table, Mark: p.cfg.Mark,
				Weight: p.cfg.Weight, Preference: p.cfg.Preference, Interval: p.cfg.Interval, Timeout: p.cfg.Timeout,
				Rounds: p.rounds, Transitions: p.transitions, ProbeError: u.openErr,
			}
			if applied != nil {
				s.Default = slices.Contains(applied.Main, p.cfg.Name)
				s.Active = applied.Active == p.cfg.Name
			}
			for _, h := range p.hosts {
				s.Hosts = append(s.Hosts, HostStatus{
					Address: h.addr, Up: h.rounds > 0 && h.history&1 == 1, Sent: h.sent, Received: h.received,
					Loss: h.loss(), RTT: h.rtt, SRTT: h.srtt, LastReply: h.lastReply,
				})
			}
			out = append(out, s)
		}
	})
	return out, err
}

// Dropped counts echo replies dropped because the monitor was behind.
func (m *Monitor) Dropped() uint64 { return m.dropped.Load() }
