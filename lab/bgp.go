package lab

import (
	"fmt"
	"strings"

	"github.com/opendmvpn/dmvpn/lab/testbed"
)

// summary is what the hubs announce to the spokes instead of the spokes'
// LANs (DMVPN phase 3): the spokes resolve the specific routes through
// the hubs' redirects.
const summary = "10.0.0.0/8"

// bgpSection is a node's bgp section: the hubs in AS 65000 peering with
// each other and originating the summary, each spoke in its own AS (the
// one its certificate says) announcing its LAN. Without IPsec the hubs
// take each spoke's AS and LAN from the file instead of its certificate.
// Timers are short: the lab converges in seconds, and a lost hub's
// session (and its routes) goes within the 3 s hold time.
func (t Topology) bgpSection(n Node, ipsec bool) string {
	var b strings.Builder
	b.WriteString("bgp:\n")
	if n.Site.Kind == testbed.Hub {
		var others []string
		for _, h := range t.hubs() {
			if h.Site.Name != n.Site.Name {
				others = append(others, h.Tunnel.Addr().String())
			}
		}
		fmt.Fprintf(&b, "  hub_as: %d\n", n.AS)
		if len(others) > 0 {
			fmt.Fprintf(&b, "  hubs: [%s]\n", strings.Join(others, ", "))
		}
		fmt.Fprintf(&b, "  summary: [%s]\n", summary)
		if !ipsec {
			b.WriteString("  spokes:\n")
			for _, s := range t.spokes() {
				fmt.Fprintf(&b, "    - address: %s\n      as: %d\n      networks: [%s]\n", s.Tunnel.Addr(), s.AS, s.Site.LAN.Masked())
			}
		}
	} else {
		fmt.Fprintf(&b, "  as: %d\n", n.AS)
	}
	b.WriteString("  keepalive: 1s\n  hold_time: 3s\n  connect_retry: 1s\n")
	return b.String()
}
