// Package bgptest is the test kit of BGP tests that need no root: a
// loopback network of this test process's own and plain GoBGP speakers
// standing in for spokes, announcing whatever they are given.
package bgptest

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
)

// LoopbackNet picks a /24 of 127.0.0.0/8 for this test process (two runs
// at once on one machine do not share addresses) and a port above 1024
// (no root needed); it skips when the loopback range does not answer.
func LoopbackNet(t *testing.T) (netip.Prefix, int) {
	t.Helper()
	third := 100 + os.Getpid()%150
	p := netip.MustParsePrefix(fmt.Sprintf("127.77.%d.0/24", third))
	l, err := net.Listen("tcp", netip.AddrPortFrom(p.Addr().Next(), 0).String())
	if err != nil {
		t.Skipf("needs the 127.0.0.0/8 loopback range bound to lo: %v", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return p, port
}

// RawSpeaker is a plain GoBGP speaker standing in for a spoke: it peers
// with the hub and announces whatever it is given, bogus or not.
func RawSpeaker(t *testing.T, as uint32, self, hub netip.Addr, hubAS uint32, port int, announce ...string) *server.BgpServer {
	t.Helper()
	lvl := &slog.LevelVar{}
	lvl.Set(slog.LevelError)
	s := server.NewBgpServer(server.LoggerOption(slog.New(slog.DiscardHandler), lvl))
	go s.Serve()
	ctx := context.Background()
	if err := s.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
		Asn: as, RouterId: self.String(), ListenPort: int32(port), ListenAddresses: []string{self.String()}}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	if err := s.AddPeer(ctx, &api.AddPeerRequest{Peer: &api.Peer{
		Conf:      &api.PeerConf{NeighborAddress: hub.String(), PeerAsn: hubAS},
		Timers:    &api.Timers{Config: &api.TimersConfig{ConnectRetry: 1, HoldTime: 9, KeepaliveInterval: 3, IdleHoldTimeAfterReset: 1}},
		Transport: &api.Transport{LocalAddress: self.String(), RemotePort: uint32(port)},
	}}); err != nil {
		t.Fatal(err)
	}
	AnnounceVia(t, s, self, announce...)
	return s
}

// AnnounceVia makes a raw speaker announce prefixes with nextHop as their
// NEXT_HOP, whoever that is.
func AnnounceVia(t *testing.T, s *server.BgpServer, nextHop netip.Addr, announce ...string) {
	t.Helper()
	AnnounceWith(t, s, nextHop, nil, announce...)
}

// AnnounceWith makes a raw speaker announce prefixes with extra path
// attributes besides ORIGIN and NEXT_HOP.
func AnnounceWith(t *testing.T, s *server.BgpServer, nextHop netip.Addr, extra []bgp.PathAttributeInterface, announce ...string) {
	t.Helper()
	nh, _ := bgp.NewPathAttributeNextHop(nextHop)
	for _, a := range announce {
		nlri, _ := bgp.NewIPAddrPrefix(netip.MustParsePrefix(a))
		attrs := append([]bgp.PathAttributeInterface{bgp.NewPathAttributeOrigin(0), nh}, extra...)
		if _, err := s.AddPath(apiutil.AddPathRequest{Paths: []*apiutil.Path{{Family: bgp.RF_IPv4_UC, Nlri: nlri,
			Attrs: attrs}}}); err != nil {
			t.Fatal(err)
		}
	}
}
