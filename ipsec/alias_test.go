package ipsec

import (
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestTSAddr(t *testing.T) {
	for _, c := range []struct {
		in   string
		want string
		ok   bool
	}{
		{"172.31.3.2/32[gre]", "172.31.3.2", true},
		{"172.31.3.2/32", "172.31.3.2", true},
		{"172.31.3.2", "172.31.3.2", true},
		{"2001:db8::1/128[gre]", "2001:db8::1", true},
		{"0.0.0.0/0[gre]", "", false},
		{"10.0.0.0/24", "", false},
		{"10.0.0.1-10.0.0.9", "", false},
	} {
		a, ok := tsAddr(c.in)
		if ok != c.ok || (ok && a.String() != c.want) {
			t.Errorf("tsAddr(%q) = %v, %v; want %s, %v", c.in, a, ok, c.want, c.ok)
		}
	}
}

func TestPlanAliases(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	sa := func(id, remote, ts string, age int) SA {
		return SA{IKEID: id, State: "ESTABLISHED", RemoteHost: netip.MustParseAddr(remote), Established: t0.Add(time.Duration(age) * time.Second),
			Children: []ChildSA{{ID: id, State: "INSTALLED", RemoteTS: []string{ts + "[gre]"}}}}
	}
	a := netip.MustParseAddr
	for _, c := range []struct {
		name    string
		sas     []SA
		aliases map[netip.Addr]netip.Addr
		bad     []string
	}{
		{"no NAT", []SA{sa("1", "198.51.100.1", "198.51.100.1/32", 0)}, map[netip.Addr]netip.Addr{}, nil},
		{"behind NAT", []SA{sa("1", "198.51.100.1", "198.51.100.1/32", 0), sa("2", "203.0.113.1", "172.31.3.2/32", 1)},
			map[netip.Addr]netip.Addr{a("203.0.113.1"): a("172.31.3.2")}, nil},
		{"two behind NAT, distinct", []SA{sa("2", "203.0.113.1", "192.168.1.2/32", 1), sa("3", "203.0.113.9", "192.168.7.2/32", 2)},
			map[netip.Addr]netip.Addr{a("203.0.113.1"): a("192.168.1.2"), a("203.0.113.9"): a("192.168.7.2")}, nil},
		{"two behind NAT, one private address: the newer goes", []SA{sa("3", "203.0.113.9", "192.168.1.2/32", 2), sa("2", "203.0.113.1", "192.168.1.2/32", 1)},
			map[netip.Addr]netip.Addr{a("203.0.113.1"): a("192.168.1.2")}, []string{"3"}},
		{"claims another peer's NBMA address", []SA{sa("1", "198.51.100.1", "198.51.100.1/32", 5), sa("9", "203.0.113.66", "198.51.100.1/32", 0)},
			map[netip.Addr]netip.Addr{}, []string{"9"}},
		{"wide selector", []SA{sa("9", "203.0.113.66", "0.0.0.0/0", 0)}, map[netip.Addr]netip.Addr{}, []string{"9"}},
		{"not yet up", []SA{{IKEID: "4", State: "CONNECTING", RemoteHost: a("203.0.113.1")}}, map[netip.Addr]netip.Addr{}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, bad := planAliases(c.sas)
			if d := cmp.Diff(c.aliases, got, cmp.Comparer(func(x, y netip.Addr) bool { return x == y })); d != "" {
				t.Errorf("aliases (-want +got):\n%s", d)
			}
			var ids []string
			for id := range bad {
				ids = append(ids, id)
			}
			if d := cmp.Diff(c.bad, ids); d != "" {
				t.Errorf("terminated (-want +got):\n%s (%v)", d, bad)
			}
		})
	}
}
