package ipsec

import (
	"net/netip"
	"sort"
	"strconv"
	"time"

	"github.com/strongswan/govici/vici"
)

// SA is an IKE SA with its CHILD_SAs, as charon lists them.
type SA struct {
	Conn       string     `json:"conn"`
	IKEID      string     `json:"ike_id"`
	State      string     `json:"state"`
	LocalHost  netip.Addr `json:"local_host"`
	RemoteHost netip.Addr `json:"remote_host"`
	RemotePort int        `json:"remote_port,omitempty"`
	LocalID    string     `json:"local_id"`
	RemoteID   string     `json:"remote_id"`
	Initiator  bool       `json:"initiator"`
	// NATRemote says charon saw the peer behind NAT (or faked it to force
	// UDP encapsulation, as kernel-libipsec needs).
	NATRemote bool `json:"nat_remote,omitempty"`
	// Established is when the IKE SA came up; RekeyIn when it rekeys.
	Established time.Time     `json:"established,omitzero"`
	RekeyIn     time.Duration `json:"rekey_in,omitempty"`
	Children    []ChildSA     `json:"children,omitempty"`
	// RemoteCertExpires is when the certificate the peer authenticated
	// with expires (zero when it was not captured).
	RemoteCertExpires time.Time `json:"remote_cert_expires,omitzero"`

	// upSeen is when this process learnt a CHILD_SA of it came up.
	upSeen time.Time
}

// ChildSA is a CHILD_SA.
type ChildSA struct {
	Name       string        `json:"name"`
	ID         string        `json:"child_id"`
	State      string        `json:"state"`
	Mode       string        `json:"mode"`
	BytesIn    uint64        `json:"bytes_in"`
	PacketsIn  uint64        `json:"packets_in"`
	BytesOut   uint64        `json:"bytes_out"`
	PacketsOut uint64        `json:"packets_out"`
	RekeyIn    time.Duration `json:"rekey_in,omitempty"`
	Installed  time.Time     `json:"installed,omitzero"`
	LocalTS    []string      `json:"local_ts,omitempty"`
	RemoteTS   []string      `json:"remote_ts,omitempty"`
}

// Up reports whether the IKE SA is established with an installed CHILD_SA.
func (s *SA) Up() bool {
	if s.State != "ESTABLISHED" {
		return false
	}
	for _, c := range s.Children {
		if c.State == "INSTALLED" || c.State == "REKEYED" {
			return true
		}
	}
	return false
}

func atoi(s string) int64 {
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}

func seconds(s string) time.Duration { return time.Duration(atoi(s)) * time.Second }

func addrOf(s string) netip.Addr {
	a, _ := netip.ParseAddr(s)
	return a.Unmap()
}

// parseSAs reads the IKE SAs of a list-sa event or an ike/child-updown
// event: each top-level section is a connection name.
func parseSAs(m *vici.Message, now time.Time) []SA {
	var out []SA
	for _, conn := range m.Keys() {
		ike := sub(m, conn)
		if ike == nil {
			continue
		}
		sa := SA{
			Conn: conn, IKEID: str(ike, "uniqueid"), State: str(ike, "state"),
			LocalHost: addrOf(str(ike, "local-host")), RemoteHost: addrOf(str(ike, "remote-host")),
			RemotePort: int(atoi(str(ike, "remote-port"))),
			LocalID:    str(ike, "local-id"), RemoteID: str(ike, "remote-id"),
			Initiator: str(ike, "initiator") == "yes", NATRemote: str(ike, "nat-remote") == "yes",
			RekeyIn: seconds(str(ike, "rekey-time")),
		}
		if est := str(ike, "established"); est != "" {
			sa.Established = now.Add(-seconds(est))
		}
		if children := sub(ike, "child-sas"); children != nil {
			for _, k := range children.Keys() {
				if c := sub(children, k); c != nil {
					sa.Children = append(sa.Children, parseChild(c, now))
				}
			}
			sortChildren(sa.Children)
		}
		out = append(out, sa)
	}
	return out
}

// parseChild parses one CHILD_SA section of a VICI SA.
func parseChild(c *vici.Message, now time.Time) ChildSA {
	cs := ChildSA{
		Name: str(c, "name"), ID: str(c, "uniqueid"), State: str(c, "state"), Mode: str(c, "mode"),
		BytesIn: uint64(atoi(str(c, "bytes-in"))), PacketsIn: uint64(atoi(str(c, "packets-in"))),
		BytesOut: uint64(atoi(str(c, "bytes-out"))), PacketsOut: uint64(atoi(str(c, "packets-out"))),
		RekeyIn: seconds(str(c, "rekey-time")),
	}
	if it := str(c, "install-time"); it != "" {
		cs.Installed = now.Add(-seconds(it))
	}
	cs.LocalTS, _ = c.Get("local-ts").([]string)
	cs.RemoteTS, _ = c.Get("remote-ts").([]string)
	return cs
}

// sortChildren orders CHILD_SAs by unique id.
func sortChildren(cs []ChildSA) {
	sort.Slice(cs, func(i, j int) bool { return cs[i].ID < cs[j].ID })
}
