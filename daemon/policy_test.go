package daemon

import (
	"context"
	"net/netip"
	"sync/atomic"
	"testing"

	"github.com/opendmvpn/dmvpn/nhrp"
	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// TestPolicyAuthorizer: a CIE outside the tunnel network is refused
// whatever the allow list says (all included), and audited; inside, the
// allow list decides, an empty one meaning the tunnel network.
func TestPolicyAuthorizer(t *testing.T) {
	tunnel := netip.MustParsePrefix("172.16.0.1/16")
	pfx := netip.MustParsePrefix
	cases := []struct {
		name   string
		policy Policy
		proto  string
		ok     bool
	}{
		{"default: a spoke in the tunnel network", Policy{}, "172.16.1.1/32", true},
		{"default: outside the tunnel network", Policy{}, "10.1.0.1/32", false},
		{"default: a prefix wider than the tunnel network", Policy{}, "172.16.0.0/12", false},
		{"default: a prefix inside it is refused", Policy{}, "172.16.8.0/24", false},
		{"all: a prefix is refused", Policy{AllowAll: true}, "172.16.1.0/24", false},
		{"prefixes: a prefix inside it", Policy{Prefixes: true}, "172.16.8.0/24", true},
		{"prefixes, list: a listed prefix", Policy{Prefixes: true, Allow: []netip.Prefix{pfx("172.16.1.0/24")}}, "172.16.1.0/25", true},
		{"all: outside the tunnel network is still refused", Policy{AllowAll: true}, "192.0.2.1/32", false},
		{"all: the underlay's default route", Policy{AllowAll: true}, "0.0.0.0/0", false},
		{"all: inside", Policy{AllowAll: true}, "172.16.200.1/32", true},
		{"list: listed", Policy{Allow: []netip.Prefix{pfx("172.16.1.0/24")}}, "172.16.1.7/32", true},
		{"list: not listed", Policy{Allow: []netip.Prefix{pfx("172.16.1.0/24")}}, "172.16.2.7/32", false},
		{"list: outside the network even if listed", Policy{Allow: []netip.Prefix{pfx("10.0.0.0/8")}}, "10.1.1.1/32", false},
		{"invalid prefix", Policy{AllowAll: true}, "", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var cur atomic.Pointer[Policy]
			p := c.policy
			cur.Store(&p)
			var audited []string
			a := policyAuthorizer(tunnel, &cur, func(r nhrp.Registration, reason string) { audited = append(audited, reason) })
			var proto netip.Prefix
			if c.proto != "" {
				proto = pfx(c.proto)
			}
			v := a.Authorize(context.Background(), nhrp.Registration{Proto: proto, NBMA: netip.MustParseAddr("198.51.100.1")})
			if got := v.Code == 0; got != c.ok {
				t.Fatalf("accepted %v, want %v (verdict %+v)", got, c.ok, v)
			}
			if !c.ok {
				if v.Code != uint8(wire.CIEAdminProhibited) || v.Reason == "" {
					t.Errorf("refusal %+v: want administratively prohibited with a reason", v)
				}
				if len(audited) != 1 || audited[0] != v.Reason {
					t.Errorf("audited %q, want the refusal %q once", audited, v.Reason)
				}
			} else if len(audited) != 0 {
				t.Errorf("an acceptance was audited as a refusal: %q", audited)
			}
		})
	}
}

// TestPolicyReloadLive: the authorizer reads the policy in force, so a
// reload from all to a list (or back) needs no restart.
func TestPolicyReloadLive(t *testing.T) {
	var cur atomic.Pointer[Policy]
	cur.Store(&Policy{AllowAll: true})
	a := policyAuthorizer(netip.MustParsePrefix("172.16.0.1/16"), &cur, nil)
	r := nhrp.Registration{Proto: netip.MustParsePrefix("172.16.3.1/32")}
	if v := a.Authorize(context.Background(), r); v.Code != 0 {
		t.Fatalf("allow all refused: %+v", v)
	}
	cur.Store(&Policy{Allow: []netip.Prefix{netip.MustParsePrefix("172.16.1.0/24")}})
	if v := a.Authorize(context.Background(), r); v.Code == 0 {
		t.Fatalf("the new list was not applied")
	}
	old := Config{Policy: Policy{AllowAll: true}}
	nw := Config{Policy: Policy{Allow: []netip.Prefix{netip.MustParsePrefix("172.16.1.0/24")}}}
	if changes, restart := diff(old, nw); len(restart) != 0 || len(changes) != 1 {
		t.Errorf("all → list: changes %q, restart %q; want one live change", changes, restart)
	}
}
