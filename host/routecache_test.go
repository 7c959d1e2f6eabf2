package host

import (
	"context"
	"net/netip"
	"testing"
)

// TestRouteCacheLookup: longest prefix, then lowest metric, tables in
// the order given with throw going on to the next; replacements and
// deletions by key.
func TestRouteCacheLookup(t *testing.T) {
	ctx := context.Background()
	c := newRouteCache()
	p := netip.MustParsePrefix
	a := netip.MustParseAddr
	via := func(gw string, idx int) []NextHop { return []NextHop{{Gw: a(gw), Index: idx}} }
	c.reset([]Route{
		{Dst: p("0.0.0.0/0"), NextHops: via("192.0.2.254", 2)},
		{Dst: p("10.0.0.0/8"), Metric: 20, NextHops: via("10.255.0.2", 3)},
		{Dst: p("10.0.0.0/8"), Metric: 10, NextHops: via("10.255.0.1", 3)},
		{Dst: p("10.1.0.0/24"), NextHops: []NextHop{{Index: 4}}},
		{Table: 42, Dst: p("10.1.0.128/25"), NextHops: via("172.16.0.9", 4)},
		{Table: 42, Dst: p("10.2.0.0/16"), Type: ThrowRoute},
		{Dst: p("2001:db8::/32"), NextHops: []NextHop{{Index: 5}}},
	})
	for _, x := range []struct {
		dst    string
		tables []int
		want   string // the route's Dst and first next hop's index; "" none
	}{
		{"10.1.0.200", []int{42, Main}, "10.1.0.128/25 4"},
		{"10.1.0.1", []int{42, Main}, "10.1.0.0/24 4"},
		{"10.2.3.4", []int{42, Main}, "10.0.0.0/8 3"}, // throw → main
		{"10.3.0.1", []int{Main}, "10.0.0.0/8 3"},
		{"203.0.113.1", []int{Main}, "0.0.0.0/0 2"},
		{"203.0.113.1", []int{42}, ""},
		{"2001:db8::1", []int{0}, "2001:db8::/32 5"},
		{"::ffff:10.1.0.1", []int{Main}, "10.1.0.0/24 4"},
	} {
		r, ok, err := c.Lookup(ctx, a(x.dst), x.tables...)
		got := ""
		if ok {
			got = r.Dst.String() + " " + string(rune('0'+r.NextHops[0].Index))
		}
		if err != nil || got != x.want {
			t.Errorf("Lookup(%s, %v) = %q, %v; want %q", x.dst, x.tables, got, err, x.want)
		}
	}
	if r, _, _ := c.Lookup(ctx, a("10.3.0.1"), Main); r.Metric != 10 || r.NextHops[0].Gw != a("10.255.0.1") {
		t.Errorf("lowest metric not chosen: %v", r)
	}
	c.update(Route{Dst: p("10.0.0.0/8"), Metric: 10}, true)
	if r, _, _ := c.Lookup(ctx, a("10.3.0.1"), Main); r.Metric != 20 {
		t.Errorf("after deleting metric 10: %v", r)
	}
	c.update(Route{Dst: p("10.0.0.0/8"), Metric: 20, NextHops: via("10.255.0.7", 3)}, false)
	if r, _, _ := c.Lookup(ctx, a("10.3.0.1"), Main); r.NextHops[0].Gw != a("10.255.0.7") {
		t.Errorf("not replaced in place: %v", r)
	}
	ds, _ := c.Routes(ctx, Main, p("0.0.0.0/0"))
	if len(ds) != 1 || ds[0].NextHops[0].Index != 2 {
		t.Errorf("default routes: %v", ds)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, _, err := c.Lookup(cctx, a("10.3.0.1"), Main); err == nil {
		t.Error("Lookup ignored a cancelled context")
	}
}

// TestRouteCacheLengths: a lookup tries only the prefix lengths a table
// holds, and that bookkeeping follows additions, deletions of one metric
// of several, deletions of the last and reloads.
func TestRouteCacheLengths(t *testing.T) {
	ctx := context.Background()
	c := newRouteCache()
	p := netip.MustParsePrefix
	a := netip.MustParseAddr
	look := func(dst string) string {
		r, ok, _ := c.Lookup(ctx, a(dst), Main)
		if !ok {
			return ""
		}
		return r.Dst.String()
	}
	c.reset([]Route{{Dst: p("198.18.0.0/15")}})
	c.update(Route{Dst: p("198.18.5.0/24"), Metric: 1}, false)
	c.update(Route{Dst: p("198.18.5.0/24"), Metric: 2}, false)
	if got := look("198.18.5.9"); got != "198.18.5.0/24" {
		t.Fatalf("after adding a /24: %q", got)
	}
	c.update(Route{Dst: p("198.18.5.0/24"), Metric: 1}, true) // one of two metrics
	if got := look("198.18.5.9"); got != "198.18.5.0/24" {
		t.Fatalf("after deleting one metric of the /24: %q", got)
	}
	c.update(Route{Dst: p("198.18.5.0/24"), Metric: 2}, true)
	if got := look("198.18.5.9"); got != "198.18.0.0/15" {
		t.Fatalf("after deleting the /24: %q", got)
	}
	if n := c.lens[Main].v4[24]; n != 0 {
		t.Errorf("the /24s counted after their deletion: %d", n)
	}
	c.update(Route{Dst: p("198.18.0.0/15")}, true)
	c.update(Route{Dst: p("198.18.0.0/15")}, true) // twice: no negative count
	if got := look("198.18.5.9"); got != "" || c.lens[Main].v4[15] != 0 {
		t.Errorf("after deleting the /15: %q, %d counted", got, c.lens[Main].v4[15])
	}
	c.update(Route{Dst: p("0.0.0.0/0")}, false)
	if got := look("198.18.5.9"); got != "0.0.0.0/0" {
		t.Errorf("default route: %q", got)
	}
	c.reset(nil)
	if got := look("198.18.5.9"); got != "" {
		t.Errorf("after a reload without routes: %q", got)
	}
}
