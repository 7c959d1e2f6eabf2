package bgp

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/internal/leakcheck"
)

// TestListensOnTunnelOnly: the speaker accepts BGP connections on the
// tunnel address and on no other address of the node (a spoke's session
// never comes from the internet side).
func TestListensOnTunnelOnly(t *testing.T) {
	leakcheck.Check(t, gobgpLeaks...)
	lo, port := loopbackNet(t)
	tunnelAddr := lo.Addr().Next() // .1
	otherAddr := tunnelAddr.Next() // .2: the node's as well (all of 127/8 is)
	cfg := Config{Role: RoleHub, Tunnel: netip.PrefixFrom(tunnelAddr, 24), Port: port, UseCertificates: true,
		Summary: []netip.Prefix{pfx("10.0.0.0/8")}, Keepalive: 3 * time.Second, Hold: 9 * time.Second, ConnectRetry: time.Second}
	c, err := NewController(cfg, Deps{Speaker: NewGoBGP(zap.NewNop()), Routes: &fakeSink{}, NHRP: &fakeNHRP{}, Audit: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	<-c.Started()
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
