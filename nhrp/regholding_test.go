package nhrp

import (
	"fmt"
	"net/netip"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opendmvpn/dmvpn/gre/gretest"
	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// TestRegistrationHoldingCapped: a client asking for the longest holding
// time the field allows (65,535 s) is granted the hub's maximum — by
// default the larger of its holding time (the lab's 600 s) and 7200 s, or
// max_registration_holding — and the reply says so, so the client
// refreshes in time; a client asking less keeps what it asked.
func TestRegistrationHoldingCapped(t *testing.T) {
	cases := []struct {
		max   time.Duration
		ask   uint16
		grant uint16
	}{
		{0, 65535, 7200},
		{0, 3600, 3600},
		{0, 0, 600},
		{900 * time.Second, 65535, 900},
		{900 * time.Second, 300, 300},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("max=%v ask=%d", c.max, c.ask), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				l := newLab(t)
				cfg := hubConfig()
				cfg.MaxRegistrationHolding = c.max
				hub := l.addHub(1, cfg)
				l.start(hub)
				nbma, addr := netip.MustParseAddr("198.51.100.50"), netip.MustParseAddr("10.0.0.50")
				// A bare device: the client is the test, answering nothing.
				dev, err := l.inet.NewDevice(gretest.Config{Name: "gre-client", NBMA: nbma, Prefix: netip.PrefixFrom(addr, 24), Key: 42})
				if err != nil {
					t.Fatal(err)
				}
				defer dev.Close()
				replies := captureTo(l, wire.TypeRegistrationReply, nbma)
				p := &wire.Packet{Type: wire.TypeRegistrationRequest, HopCount: HopCount, Flags: wire.RegFlagU, RequestID: 77,
					SrcNBMA: nbma, SrcProto: addr, DstProto: hubAddr(1),
					CIEs: []wire.CIE{{PrefixLen: 32, HoldingTime: c.ask}}}
				start := time.Now()
				l.inet.Inject(nbma, hubNBMA(1), forge(t, p))
				settle(time.Second)
				got := replies()
				if len(got) != 1 || len(got[0].CIEs) != 1 || got[0].CIEs[0].Code != wire.CIESuccess {
					t.Fatalf("replies %+v: want one accepting the registration", got)
				}
				if h := got[0].CIEs[0].HoldingTime; h != c.grant {
					t.Errorf("reply's holding time %d s, want %d s", h, c.grant)
				}
				e, ok := hub.entry(t, hostPrefix(addr))
				if !ok {
					t.Fatal("no registration")
				}
				if e.HoldingTime != int(c.grant) {
					t.Errorf("registration held %d s, want %d s", e.HoldingTime, c.grant)
				}
				if want := start.Add(time.Duration(c.grant) * time.Second); !e.Expires.Equal(want) {
					t.Errorf("registration expires at %v, want %v", e.Expires, want)
				}
			})
		})
	}
}

// TestRestoredRegistrationHoldingCapped: a registration restored from a
// state file is held no longer than the hub grants one (the file is
// trusted no further than a client is): 65,535 s asked and saved come
// back as 7200 s; a restored resolved binding keeps its own cap.
func TestRestoredRegistrationHoldingCapped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		hub := l.addHub(1, hubConfig())
		l.start(hub)
		settle(time.Second)
		err := hub.eng.do(t.Context(), func() {
			e := hub.eng
			for _, c := range []struct {
				typ   EntryType
				hold  uint16
				grant time.Duration
			}{
				{TypeDynamic, 65535, 7200 * time.Second},
				{TypeDynamic, 900, 900 * time.Second},
				{TypeCached, 900, 900 * time.Second},
			} {
				se := StateEntry{Type: c.typ, Proto: netip.MustParsePrefix("10.0.0.77/32"), NBMA: netip.MustParseAddr("198.51.100.77"),
					Created: e.now, Expires: e.now.Add(65535 * time.Second), Holding: c.hold}
				en, ok := e.restoredEntry(se)
				if !ok {
					t.Errorf("%v held %d s: not restored", c.typ, c.hold)
					continue
				}
				if got := en.expires.Sub(e.now); got != c.grant || en.holding != uint16(c.grant/time.Second) {
					t.Errorf("%v held %d s: restored for %v (holding %d s), want %v", c.typ, c.hold, got, en.holding, c.grant)
				}
			}
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}
