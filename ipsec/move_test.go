package ipsec

import (
	"net/netip"
	"slices"
	"testing"
)

// A connection this node initiates starts from the local address the
// uplinks chose; the one that accepts takes any.
func TestLoadConnLocalAddrs(t *testing.T) {
	local := netip.MustParseAddr("203.0.113.65")
	for _, tc := range []struct {
		spec connSpec
		want []string
	}{
		{connSpec{name: connNHS(netip.MustParseAddr("192.0.2.1")), kind: kindNHS, remote: netip.MustParseAddr("192.0.2.1"), local: local}, []string{"203.0.113.65"}},
		{connSpec{name: connPeer(netip.MustParseAddr("198.51.100.17")), kind: kindPeer, remote: netip.MustParseAddr("198.51.100.17"), local: local}, []string{"203.0.113.65"}},
		{connSpec{name: connPeer(netip.MustParseAddr("198.51.100.17")), kind: kindPeer, remote: netip.MustParseAddr("198.51.100.17")}, []string{"%any"}},
		{connSpec{name: connAccept, kind: kindAccept, local: local}, []string{"%any"}},
	} {
		m := loadConnMessage(tc.spec, Config{}.withDefaults(), ModeUserspace, creds{cert: "cert"})
		conn, ok := m.Get(tc.spec.name).(interface{ Get(string) any })
		if !ok {
			t.Fatalf("%s: no connection in the message", tc.spec.name)
		}
		got, _ := conn.Get("local_addrs").([]string)
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s (kind %d, local %v): local_addrs %v, want %v", tc.spec.name, tc.spec.kind, tc.spec.local, got, tc.want)
		}
	}
}
