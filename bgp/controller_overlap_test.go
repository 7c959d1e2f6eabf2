package bgp

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/opendmvpn/dmvpn/internal/leakcheck"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// TestHubOverlapUpdatesOnlyOverlappingSpokes: a spoke whose network lies
// inside another's makes the other's filter exclude it, then the spokes
// of a third, more specific network both; it leaving, or its networks
// changing, re-filters those spokes again; a hundred spokes with
// networks of their own cost one addition each and touch no one else.
func TestHubOverlapUpdatesOnlyOverlappingSpokes(t *testing.T) {
	leakcheck.Check(t)
	cfg := hubConfig()
	cfg.Hubs = nil
	h := start(t, cfg, newFakeSpeaker(), &fakeNHRP{}, &fakeSink{})
	reg := func(a string, nets ...string) { h.c.Event(registered(a, "198.51.100.1", attrs("65001", nets...))) }

	reg("172.16.1.1", "10.0.0.0/16")
	h.ops("add 172.16.1.1 as=65001 nets=[10.0.0.0/16]")
	reg("172.16.1.2", "10.0.5.0/24")
	h.ops("add 172.16.1.2 as=65001 nets=[10.0.5.0/24]",
		"refilter 172.16.1.1 as=65001 nets=[10.0.0.0/16] excluded=[10.0.5.0/24]")
	// The same network as another: neither excludes it.
	reg("172.16.1.3", "10.0.5.0/24")
	h.ops("add 172.16.1.3 as=65001 nets=[10.0.5.0/24]")

	// Disjoint spokes: each an addition, nothing else.
	var want []string
	for i := range 100 {
		a := fmt.Sprintf("172.16.2.%d", i+1)
		n := fmt.Sprintf("10.%d.0.0/16", 100+i)
		reg(a, n)
		want = append(want, fmt.Sprintf("add %s as=65001 nets=[%s]", a, n))
	}
	h.ops(want...)

	// A more specific network inside both: every spoke above it, and only
	// those, excludes it.
	reg("172.16.1.4", "10.0.5.128/26")
	h.ops("add 172.16.1.4 as=65001 nets=[10.0.5.128/26]",
		"refilter 172.16.1.1 as=65001 nets=[10.0.0.0/16] excluded=[10.0.5.0/24 10.0.5.128/26]",
		"refilter 172.16.1.2 as=65001 nets=[10.0.5.0/24] excluded=[10.0.5.128/26]",
		"refilter 172.16.1.3 as=65001 nets=[10.0.5.0/24] excluded=[10.0.5.128/26]")
	if n := h.sp.neighbors()[addr("172.16.1.4")]; len(n.Excluded) != 0 {
		t.Errorf("the most specific spoke excludes %v", n.Excluded)
	}

	// A renewed certificate moves it elsewhere inside the /16 only.
	reg("172.16.1.4", "10.0.9.0/24")
	h.ops("refilter 172.16.1.4 as=65001 nets=[10.0.9.0/24]",
		"refilter 172.16.1.1 as=65001 nets=[10.0.0.0/16] excluded=[10.0.5.0/24 10.0.9.0/24]",
		"refilter 172.16.1.2 as=65001 nets=[10.0.5.0/24]",
		"refilter 172.16.1.3 as=65001 nets=[10.0.5.0/24]")

	// One of the two /24 spokes leaves: the other still has the network,
	// the /16 spoke still excludes it: no change.
	h.c.Event(expired("172.16.1.3", nhrp.CauseExpired))
	h.ops("delete 172.16.1.3")
	h.c.Event(expired("172.16.1.2", nhrp.CauseExpired))
	h.ops("delete 172.16.1.2", "refilter 172.16.1.1 as=65001 nets=[10.0.0.0/16] excluded=[10.0.9.0/24]")
	// A spoke refused as a neighbour (a certificate with two AS fields)
	// takes its network out as well.
	h.c.Event(registered("172.16.1.4", "198.51.100.1", map[string][]string{"AS": {"65001", "65002"}, "NET": {"10.0.9.0/24"}}))
	h.ops("delete 172.16.1.4", "refilter 172.16.1.1 as=65001 nets=[10.0.0.0/16]")

	// The summary and the controller agree with the speaker.
	if n := h.sp.neighbors()[addr("172.16.1.1")]; len(n.Excluded) != 0 {
		t.Errorf("172.16.1.1 still excludes %v", n.Excluded)
	}
	if ops := h.sp.takeOps(); len(ops) != 0 {
		t.Errorf("more operations: %v", ops)
	}
}

// TestHubOverlapWithoutIPsec: the networks bgp.spokes and
// bgp.default_spoke give go through the same exclusions: a configured
// spoke's network inside the default one is excluded from every spoke
// that has the default (they all have the same network: none excludes
// another's).
func TestHubOverlapWithoutIPsec(t *testing.T) {
	leakcheck.Check(t)
	cfg := hubConfig()
	cfg.Hubs, cfg.UseCertificates = nil, false
	cfg.Spokes = map[netip.Addr]SpokeAuth{addr("172.16.1.1"): {AS: 65001, Networks: []netip.Prefix{pfx("10.1.0.0/24")}}}
	cfg.DefaultSpoke = &SpokeAuth{AS: 65100, Networks: []netip.Prefix{pfx("10.0.0.0/8")}}
	h := start(t, cfg, newFakeSpeaker(), &fakeNHRP{}, &fakeSink{})
	ev := func(a, nbma string) nhrp.Event {
		return nhrp.Event{Kind: nhrp.EventRegistered, Proto: netip.PrefixFrom(addr(a), 32), NBMA: addr(nbma)}
	}
	h.c.Event(ev("172.16.7.1", "198.51.100.7"))
	h.ops("add 172.16.7.1 as=65100 nets=[10.0.0.0/8]")
	h.c.Event(ev("172.16.7.2", "198.51.100.8"))
	h.ops("add 172.16.7.2 as=65100 nets=[10.0.0.0/8]")
	h.c.Event(ev("172.16.1.1", "198.51.100.1"))
	h.ops("add 172.16.1.1 as=65001 nets=[10.1.0.0/24]",
		"refilter 172.16.7.1 as=65100 nets=[10.0.0.0/8] excluded=[10.1.0.0/24]",
		"refilter 172.16.7.2 as=65100 nets=[10.0.0.0/8] excluded=[10.1.0.0/24]")
	cfgd := Config{Role: RoleHub, Tunnel: pfx("172.16.0.1/16")}.WithDefaults()
	n := h.sp.neighbors()[addr("172.16.7.1")]
	if got, want := cfgd.Refusal(n, pfx("10.1.0.0/25")), "inside 10.1.0.0/24, another spoke's more specific network"; got != want {
		t.Errorf("a default spoke announcing inside the configured one: %q, want %q", got, want)
	}
	// A later registration of a default spoke finds the exclusion at once.
	h.c.Event(ev("172.16.7.3", "198.51.100.9"))
	h.ops("add 172.16.7.3 as=65100 nets=[10.0.0.0/8] excluded=[10.1.0.0/24]")
}

// TestHubOverlapResyncRetries: a re-filter the speaker failed is made
// at the next resynchronisation.
func TestHubOverlapResyncRetries(t *testing.T) {
	leakcheck.Check(t)
	cfg := hubConfig()
	cfg.Hubs = nil
	h := start(t, cfg, newFakeSpeaker(), &fakeNHRP{}, &fakeSink{})
	for _, s := range []struct{ a, as, net string }{{"172.16.1.1", "65001", "10.0.0.0/16"}, {"172.16.1.2", "65002", "10.0.5.0/24"}} {
		h.nh.register(s.a, "198.51.100.1", attrs(s.as, s.net))
	}
	h.c.Event(registered("172.16.1.1", "198.51.100.1", attrs("65001", "10.0.0.0/16")))
	h.ops("add 172.16.1.1 as=65001 nets=[10.0.0.0/16]")
	h.sp.mu.Lock()
	h.sp.fail = addr("172.16.1.1")
	h.sp.mu.Unlock()
	h.c.Event(registered("172.16.1.2", "198.51.100.2", attrs("65002", "10.0.5.0/24")))
	h.ops("add 172.16.1.2 as=65002 nets=[10.0.5.0/24]", "failed refilter 172.16.1.1 as=65001 nets=[10.0.0.0/16] excluded=[10.0.5.0/24]")
	h.sp.mu.Lock()
	h.sp.fail = netip.Addr{}
	h.sp.mu.Unlock()
	// The next resynchronisation (every resyncEvery; a replaced
	// registration's event runs one at once) makes it.
	h.c.Event(expired("172.16.1.9", nhrp.CauseReplaced))
	h.ops("refilter 172.16.1.1 as=65001 nets=[10.0.0.0/16] excluded=[10.0.5.0/24]")
}
