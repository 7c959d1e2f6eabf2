package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/lab/testbed"
)

// nftCounters are named nftables counters in a node, in a table of their
// own, counting the forwarded packets that match each rule. They prove
// where traffic went whatever the data plane (the kernel backend keeps no
// per-peer counters) and whatever the implementation (FRR): on the
// internet router, the GRE data packets from one NBMA address to another;
// on a hub, what it relays from its tunnel back into it.
type nftCounters struct {
	t     testing.TB
	node  *testbed.Node
	table string
}

// countTable is the nftables table of the counters.
const countTable = "dmvt_count"

// countForwarded installs a counter per rule (name → nft match) in the
// forward hook of a node.
func countForwarded(t testing.TB, n *testbed.Node, rules map[string]string) *nftCounters {
	t.Helper()
	return countAt(t, n, "forward", countTable, rules)
}

// countAt installs a counter per rule (name → nft match) in a hook of a
// node (forward, input, output), in a table of its own.
func countAt(t testing.TB, n *testbed.Node, hook, table string, rules map[string]string) *nftCounters {
	t.Helper()
	names := make([]string, 0, len(rules))
	for name := range rules {
		names = append(names, name)
	}
	slices.Sort(names)
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {\n", table)
	for _, name := range names {
		fmt.Fprintf(&b, "\tcounter %s {}\n", name)
	}
	fmt.Fprintf(&b, "\tchain count {\n\t\ttype filter hook %s priority -10; policy accept;\n", hook)
	for _, name := range names {
		fmt.Fprintf(&b, "\t\t%s counter name %q\n", rules[name], name)
	}
	b.WriteString("\t}\n}\n")
	path := filepath.Join(t.TempDir(), "count.nft")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if out, err := n.Run(ctx, "nft", "-f", path); err != nil {
		t.Fatalf("%s: counters: %v\n%s\n%s", n.Name, err, out, b.String())
	}
	return &nftCounters{t: t, node: n, table: table}
}

// greData matches GRE data packets (anything but NHRP) from one NBMA
// address to another.
func greData(src, dst netip.Addr) string {
	return fmt.Sprintf("ip saddr %s ip daddr %s meta l4proto gre @th,16,16 != 0x2001", src, dst)
}

// relayedOn matches packets forwarded from a tunnel interface back into it.
func relayedOn(iface string) string {
	return fmt.Sprintf("iifname %q oifname %q", iface, iface)
}

// get returns every counter's packets.
func (c *nftCounters) get() map[string]uint64 {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := c.node.Run(ctx, "nft", "-j", "list", "counters", "table", "inet", c.table)
	if err != nil {
		c.t.Fatalf("%s: reading counters: %v", c.node.Name, err)
	}
	var doc struct {
		Nftables []struct {
			Counter *struct {
				Name    string `json:"name"`
				Packets uint64 `json:"packets"`
			} `json:"counter"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		c.t.Fatalf("%s: counters: %v\n%s", c.node.Name, err, out)
	}
	m := map[string]uint64{}
	for _, x := range doc.Nftables {
		if x.Counter != nil {
			m[x.Counter.Name] = x.Counter.Packets
		}
	}
	return m
}

// value returns one counter's packets.
func (c *nftCounters) value(name string) uint64 {
	c.t.Helper()
	v, ok := c.get()[name]
	if !ok {
		c.t.Fatalf("%s: no counter %q", c.node.Name, name)
	}
	return v
}
