package bgp

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/internal/leakcheck"
)

// TestListensOnTunnelOnly: the speaker accepts BGP connections on the
// tunnel address and on no other address of the node (a spoke's session
// never comes from the internet side).
func TestListensOnTunnelOnly(t *testing.T) {
	leakcheck.Check(t, gobgpLeaks...)
	cfg, tunnelAddr, otherAddr, port := loopbackHub(t) // .2 is the node's too: all of 127/8 is
	startGoBGPHub(t, cfg)
	dial := func(a netip.Addr) error {
		conn, err := net.DialTimeout("tcp", netip.AddrPortFrom(a, uint16(port)).String(), 2*time.Second)
		if err == nil {
			conn.Close()
		}
		return err
	}
	if err := dial(tunnelAddr); err != nil {
		t.Fatalf("no BGP listener on the tunnel address %s: %v", tunnelAddr, err)
	}
	if err := dial(otherAddr); err == nil {
		t.Errorf("BGP accepted a connection on %s, not the tunnel address", otherAddr)
	}
}
