package bgp

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

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

// TestHubPurgeKeepsNeighbourThroughRestart: a spoke that purges its
// registration as it stops stays a neighbour for the graceful restart
// time (its routes kept, stale, by the speaker); registered again within
// it, it stays; not, it goes then. Without graceful restart a purge
// removes it at once.
func TestHubPurgeKeepsNeighbourThroughRestart(t *testing.T) {
	leakcheck.Check(t)
	cfg := hubConfig()
	cfg.Hubs = nil
	cfg.RestartTime = 300 * time.Millisecond
	h := start(t, cfg, newFakeSpeaker(), &fakeNHRP{}, &fakeSink{})
	for _, a := range []string{"172.16.1.1", "172.16.2.1"} {
		h.c.Event(registered(a, "198.51.100.1", attrs("65001", "10.1.0.0/24")))
	}
	h.ops("add 172.16.1.1 as=65001 nets=[10.1.0.0/24]", "add 172.16.2.1 as=65001 nets=[10.1.0.0/24]")

	// 172.16.2.1 restarts: purged, registered again within the time.
	h.c.Event(expired("172.16.2.1", nhrp.CausePurged))
	h.c.Event(registered("172.16.3.1", "198.51.100.3", attrs("65003", "10.3.0.0/24")))
	h.ops("add 172.16.3.1 as=65003 nets=[10.3.0.0/24]")
	if _, ok := h.sp.neighbors()[addr("172.16.2.1")]; !ok {
		t.Fatal("a purged spoke removed at once despite graceful restart")
	}
	h.c.Event(registered("172.16.2.1", "198.51.100.2", attrs("65001", "10.1.0.0/24")))
	// 172.16.1.1 stops for good: purged, never back.
	purged := time.Now()
	h.c.Event(expired("172.16.1.1", nhrp.CausePurged))
	h.ops("delete 172.16.1.1")
	if d := time.Since(purged); d < cfg.RestartTime {
		t.Errorf("removed after %v, before the restart time %v", d, cfg.RestartTime)
	}
	h.c.Event(registered("172.16.4.1", "198.51.100.4", attrs("65004", "10.4.0.0/24")))
	h.ops("add 172.16.4.1 as=65004 nets=[10.4.0.0/24]") // and no delete of 172.16.2.1 before it

	// Without graceful restart a purge removes at once.
	cfg.RestartTime = 0
	h2 := start(t, cfg, newFakeSpeaker(), &fakeNHRP{}, &fakeSink{})
	h2.c.Event(registered("172.16.1.1", "198.51.100.1", attrs("65001", "10.1.0.0/24")))
	h2.ops("add 172.16.1.1 as=65001 nets=[10.1.0.0/24]")
	h2.c.Event(expired("172.16.1.1", nhrp.CausePurged))
	h2.ops("delete 172.16.1.1")
}

// TestHubReplacedReadsOneBinding: a registration replaced (two NBMA
// addresses registering one address in turn, without the unique flag)
// reads the engine's binding of that address, not the whole cache; the
// neighbour follows the registration's new NBMA address and stays.
func TestHubReplacedReadsOneBinding(t *testing.T) {
	leakcheck.Check(t)
	cfg := hubConfig()
	cfg.Hubs = nil
	nh := &fakeNHRP{}
	h := start(t, cfg, newFakeSpeaker(), nh, &fakeSink{})
	at := attrs("65001", "10.1.0.0/24")
	nh.register("172.16.1.1", "198.51.100.1", at)
	h.c.Event(registered("172.16.1.1", "198.51.100.1", at))
	h.ops("add 172.16.1.1 as=65001 nets=[10.1.0.0/24]")
	// The start's resync has read the cache; from here on, none.
	waitFor(t, "the start's cache read", 5*time.Second, func() bool { return nh.cacheReads() >= 1 })
	before := nh.cacheReads()
	for i := range 1000 {
		nbma := fmt.Sprintf("198.51.100.%d", 1+i%2)
		nh.register("172.16.1.1", nbma, at)
		h.c.Event(expired("172.16.1.1", nhrp.CauseReplaced))
		h.c.Event(registered("172.16.1.1", nbma, at))
	}
	// A change the controller acts on after them, to know it is done.
	nh.mu.Lock()
	nh.cache = []nhrp.CacheEntry{{Type: nhrp.TypeStatic, Proto: pfx("172.16.1.1/32"), NBMA: addr("198.51.100.1")}}
	nh.mu.Unlock()
	h.c.Event(expired("172.16.1.1", nhrp.CauseReplaced))
	h.ops("delete 172.16.1.1")
	if n := nh.cacheReads() - before; n != 0 {
		t.Errorf("1,001 replaced registrations read the whole cache %d times; want none", n)
	}
}

// TestHubNeighbourLimit: past bgp.max_neighbors a registered spoke is not
// made a neighbour (counted, audited, listed with why); once another goes,
// its next registration makes it one.
func TestHubNeighbourLimit(t *testing.T) {
	leakcheck.Check(t)
	cfg := hubConfig()
	cfg.Hubs = nil
	cfg.MaxNeighbors = 2
	nh := &fakeNHRP{}
	h := start(t, cfg, newFakeSpeaker(), nh, &fakeSink{})
	for i, a := range []string{"172.16.1.1", "172.16.1.2", "172.16.1.3"} {
		at := attrs(fmt.Sprint(65001+i), fmt.Sprintf("10.%d.0.0/24", i+1))
		nh.register(a, "198.51.100.1", at)
		h.c.Event(registered(a, "198.51.100.1", at))
	}
	h.ops("add 172.16.1.1 as=65001 nets=[10.1.0.0/24]", "add 172.16.1.2 as=65002 nets=[10.2.0.0/24]")
	waitFor(t, "the third listed as refused", 5*time.Second, func() bool {
		s, err := h.c.Summary(h.ctx)
		return err == nil && len(s.Refused) == 1 && s.Refused[0].Address == addr("172.16.1.3") &&
			strings.Contains(s.Refused[0].Reason, "max_neighbors")
	})
	if n := h.c.Stats().NeighborsRefused; n != 1 {
		t.Errorf("neighbours refused: %d, want 1", n)
	}
	if n := h.logs.FilterMessage("bgp neighbour refused").Len(); n != 1 {
		t.Errorf("%d audit lines of the refusal, want 1", n)
	}
	h.c.Event(expired("172.16.1.1", nhrp.CauseExpired))
	h.ops("delete 172.16.1.1")
	h.c.Event(registered("172.16.1.3", "198.51.100.1", attrs("65003", "10.3.0.0/24")))
	h.ops("add 172.16.1.3 as=65003 nets=[10.3.0.0/24]")
}
