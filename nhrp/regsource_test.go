package nhrp

import (
	"context"
	"net/netip"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opendmvpn/dmvpn/gre/gretest"
	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// Registrations of an address that is not the client's. Without IPsec
// (no Authorizer proof) a client registers its own address: a host CIE is
// the request's source protocol address, a prefix CIE contains it. Before,
// spoke3 — registered itself — sent from its own NBMA address a request
// with its own source and one CIE for spoke1's address: the hub replaced
// spoke1's no-unique binding with spoke3's NBMA address for 7200 s, and the
// same claimed any unheld address.

// TestRegistrationOfAnotherAddress sends the hub (spoke1 registered
// without the unique flag) one registration per case, from sender with
// source address src and one CIE for proto, and checks the CIE code of the
// reply, where proto ends up bound, and that a refusal is counted
// (Traffic.Dropped["refused"]) and emitted as registration-refused with
// code 4 and the sender's NBMA address.
func TestRegistrationOfAnotherAddress(t *testing.T) {
	elsewhere := netip.MustParseAddr("203.0.113.11") // spoke1's new uplink
	unheld := netip.MustParseAddr("10.0.0.50")
	for _, tc := range []struct {
		name     string
		proven   bool // an Authorizer proves every address (as a certificate's OU=GRE= does)
		sender   netip.Addr
		src      netip.Addr
		proto    netip.Prefix
		want     wire.CIECode
		boundAt  netip.Addr // where proto is bound afterwards; invalid: nowhere
		refusals int
	}{
		{"spoke1's no-unique address from spoke3", false, spokeNBMA(3), spokeAddr(3), hostPrefix(spokeAddr(1)), wire.CIEAdminProhibited, spokeNBMA(1), 1},
		{"an unheld address from spoke3", false, spokeNBMA(3), spokeAddr(3), hostPrefix(unheld), wire.CIEAdminProhibited, netip.Addr{}, 1},
		{"a prefix without the source from spoke3", false, spokeNBMA(3), spokeAddr(3), netip.MustParsePrefix("10.0.0.48/30"), wire.CIEAdminProhibited, netip.Addr{}, 1},
		{"a prefix around the source from spoke3", false, spokeNBMA(3), spokeAddr(3), netip.MustParsePrefix("10.0.0.12/30"), wire.CIESuccess, spokeNBMA(3), 0},
		{"spoke1's own address from a new NBMA address (no-unique: it moves)", false, elsewhere, spokeAddr(1), hostPrefix(spokeAddr(1)), wire.CIESuccess, elsewhere, 0},
		{"an unheld address the Authorizer proves", true, spokeNBMA(3), spokeAddr(3), hostPrefix(unheld), wire.CIESuccess, spokeNBMA(3), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				l := newLab(t)
				hub := l.addHub(1, hubConfig(), 1, 2, 3)
				if tc.proven {
					hub.deps.Authorizer = AuthorizerFunc(func(ctx context.Context, r Registration) Verdict {
						return Verdict{Proven: true, Identity: "CN=" + r.Proto.String()}
					})
				}
				l.start(hub)
				for i := 1; i <= 3; i++ {
					cfg := spokeConfig(1)
					cfg.NoUnique = i == 1
					l.start(l.addSpoke(i, 1, cfg))
				}
				// spoke1's new uplink, to receive the reply.
				dev, err := l.inet.NewDevice(gretest.Config{Name: "gre-spoke1-new", NBMA: elsewhere, Prefix: netip.PrefixFrom(spokeAddr(1), 24), Key: 42})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { dev.Close() })
				settle(time.Second)
				if e, ok := hub.entry(t, hostPrefix(spokeAddr(1))); !ok || e.NBMA != spokeNBMA(1) {
					t.Fatalf("spoke1 is not registered: %+v", e)
				}
				replies := captureTo(l, wire.TypeRegistrationReply, tc.sender)
				tr0, err := hub.eng.Traffic(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				evs0 := len(hub.eventsOf(EventRegistrationRefused))
				l.inet.Inject(tc.sender, hubNBMA(1), forge(t, &wire.Packet{Type: wire.TypeRegistrationRequest, RequestID: 81,
					SrcNBMA: tc.sender, SrcProto: tc.src, DstProto: hubAddr(1),
					CIEs: []wire.CIE{{PrefixLen: uint8(tc.proto.Bits()), HoldingTime: 7200, Proto: tc.proto.Addr()}}}))
				settle(time.Second)

				var got []wire.CIECode
				for _, p := range replies() {
					if p.RequestID == 81 {
						for _, c := range p.CIEs {
							got = append(got, c.Code)
						}
					}
				}
				if len(got) != 1 || got[0] != tc.want {
					t.Errorf("reply CIE codes %v, want [%v]", got, tc.want)
				}
				e, ok := hub.entry(t, tc.proto)
				switch {
				case tc.boundAt.IsValid() && (!ok || e.NBMA != tc.boundAt):
					t.Errorf("%s: %+v (bound %v), want at %s", tc.proto, e, ok, tc.boundAt)
				case !tc.boundAt.IsValid() && ok:
					t.Errorf("%s bound: %+v", tc.proto, e)
				}
				tr, err := hub.eng.Traffic(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				if n := tr.Dropped["refused"] - tr0.Dropped["refused"]; n != uint64(tc.refusals) {
					t.Errorf("refused registrations counted %d, want %d", n, tc.refusals)
				}
				evs := hub.eventsOf(EventRegistrationRefused)[evs0:]
				if len(evs) != tc.refusals {
					t.Fatalf("registration-refused events %+v, want %d", evs, tc.refusals)
				}
				for _, ev := range evs {
					if ev.Code != uint8(wire.CIEAdminProhibited) || ev.NBMA != tc.sender || ev.Proto != tc.proto || ev.Reason == "" {
						t.Errorf("event %+v, want code 4 for %s from %s with a reason", ev, tc.proto, tc.sender)
					}
				}
				if tc.refusals > 0 {
					if e, ok := hub.entry(t, hostPrefix(spokeAddr(1))); !ok || e.NBMA != spokeNBMA(1) {
						t.Errorf("spoke1's registration changed: %+v", e)
					}
				}
			})
		})
	}
}

// TestUnprovenRegistration decides host and prefix CIEs, IPv4 and IPv6,
// against the request's source address.
func TestUnprovenRegistration(t *testing.T) {
	a, pf := netip.MustParseAddr, netip.MustParsePrefix
	for _, tc := range []struct {
		src, proto string
		ok         bool
	}{
		{"10.0.0.13", "10.0.0.13/32", true},
		{"10.0.0.13", "10.0.0.11/32", false},
		{"10.0.0.13", "10.0.0.12/30", true},
		{"10.0.0.13", "10.0.0.8/30", false},
		{"fd00::13", "fd00::13/128", true},
		{"fd00::13", "fd00::11/128", false},
		{"fd00::13", "fd00::/120", true},
		{"fd00::13", "fd00::100/120", false},
	} {
		if reason := unprovenRegistration(a(tc.src), pf(tc.proto)); (reason == "") != tc.ok {
			t.Errorf("source %s, CIE %s: %q, want accepted %v", tc.src, tc.proto, reason, tc.ok)
		}
	}
}
