package bgp

import (
	"net/netip"
	"testing"

	"github.com/opendmvpn/dmvpn/internal/leakcheck"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// TestHubIgnoresRegistrationsAtHubs: a registration at a configured
// hub's address or this hub's own never makes a spoke neighbour, by event
// or by resynchronisation with the cache, and its expiry leaves the hub
// neighbour alone; a registration of more than one address is no
// neighbour at its network address.
func TestHubIgnoresRegistrationsAtHubs(t *testing.T) {
	leakcheck.Check(t)
	h := start(t, hubConfig(), newFakeSpeaker(), &fakeNHRP{}, &fakeSink{})
	h.ops("add 172.16.0.2 as=65000 nets=[]")

	h.c.Event(registered("172.16.0.2", "198.51.100.2", attrs("65002", "10.2.0.0/24")))
	h.c.Event(registered("172.16.0.1", "198.51.100.1", attrs("65001", "10.1.0.0/24")))
	wide := registered("172.16.5.0", "198.51.100.5", attrs("65005", "10.5.0.0/24"))
	wide.Proto = netip.MustParsePrefix("172.16.5.0/24")
	h.c.Event(wide)
	h.c.Event(expired("172.16.0.2", nhrp.CauseExpired))
	// The same in the cache, then a resynchronisation (a replacement
	// asks for one).
	h.nh.register("172.16.0.2", "198.51.100.2", attrs("65002", "10.2.0.0/24"))
	h.nh.register("172.16.0.1", "198.51.100.1", attrs("65001", "10.1.0.0/24"))
	h.c.Event(expired("172.16.9.9", nhrp.CauseReplaced))
	// A real spoke last: whatever the others did comes before it.
	h.c.Event(registered("172.16.1.1", "198.51.100.11", attrs("65001", "10.1.0.0/24")))
	h.ops("add 172.16.1.1 as=65001 nets=[10.1.0.0/24]")
	nbrs := h.sp.neighbors()
	if n := nbrs[addr("172.16.0.2")]; n.Kind != KindHub || n.AS != 65000 {
		t.Errorf("the configured hub is now %+v", n)
	}
	for _, a := range []string{"172.16.0.1", "172.16.5.0"} {
		if _, ok := nbrs[addr(a)]; ok {
			t.Errorf("%s became a neighbour", a)
		}
	}
}

// TestHubRemovesSpokeReplacedByStatic: a registration a static map (or a
// local entry) replaced goes at once; one replaced by a registration from
// a new NBMA address stays (TestHubNeighboursFollowRegistrations).
func TestHubRemovesSpokeReplacedByStatic(t *testing.T) {
	leakcheck.Check(t)
	cfg := hubConfig()
	cfg.Hubs = nil
	nh := &fakeNHRP{}
	h := start(t, cfg, newFakeSpeaker(), nh, &fakeSink{})
	nh.register("172.16.1.1", "198.51.100.1", attrs("65001", "10.1.0.0/24"))
	h.c.Event(registered("172.16.1.1", "198.51.100.1", attrs("65001", "10.1.0.0/24")))
	h.ops("add 172.16.1.1 as=65001 nets=[10.1.0.0/24]")
	nh.mu.Lock()
	nh.cache = []nhrp.CacheEntry{{Type: nhrp.TypeStatic, Proto: pfx("172.16.1.1/32"), NBMA: addr("198.51.100.1")}}
	nh.mu.Unlock()
	h.c.Event(expired("172.16.1.1", nhrp.CauseReplaced))
	h.ops("delete 172.16.1.1")
}
