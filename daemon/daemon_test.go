package daemon

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/ipsec"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// TestNewRefusesClearByOmission: a node without IPsec must say it runs
// in clear (IPsecOff); saying both is refused too.
func TestNewRefusesClearByOmission(t *testing.T) {
	base := Config{
		Node:   "h",
		Tunnel: gre.Config{Name: "gre1", Prefix: netip.MustParsePrefix("172.16.0.1/16")},
		NHRP:   nhrp.Config{Role: nhrp.RoleHub, HoldingTime: time.Hour},
	}
	if _, err := New(base, nil); !errors.Is(err, ErrNoIPsec) {
		t.Errorf("no IPsec, not off: %v, want ErrNoIPsec", err)
	}
	off := base
	off.IPsecOff = true
	if _, err := New(off, nil); err != nil {
		t.Errorf("ipsec off: %v", err)
	}
	both := off
	both.IPsec = &ipsec.Config{}
	if _, err := New(both, nil); err == nil {
		t.Errorf("IPsec configured and off at once was accepted")
	}
}
