package lab

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/opendmvpn/dmvpn/lab/testbed"
)

// Node is a DMVPN node of a topology: a hub or a spoke running dmvpnd.
type Node struct {
	Site testbed.Site
	// Tunnel is the node's tunnel address with the tunnel network's length.
	Tunnel netip.Prefix
	// AS is the node's autonomous system, written in its certificate
	// (OU=AS=) as the Alpine guide's certificates carry it.
	AS uint32
	// Claims, when valid, is the tunnel address the node's certificate
	// names (OU=GRE=) instead of its own: the rogue spoke.
	Claims netip.Addr
}

// Rogue reports whether the node's certificate names another tunnel
// address than its own.
func (n Node) Rogue() bool { return n.Claims.IsValid() }

// certGRE is the tunnel address the node's certificate names.
func (n Node) certGRE() netip.Addr {
	if n.Rogue() {
		return n.Claims
	}
	return n.Tunnel.Addr()
}

// Topology is a lab network: hubs and spokes on the internet.
type Topology struct {
	Name  string
	About string
	Nodes []Node
	// Key is the GRE key of the cloud.
	Key uint32
	// NoFirewall writes `firewall: off` in the nodes' files (up
	// --no-firewall); by default every node runs the firewall.
	NoFirewall bool
	// Dataplane is the nodes' data plane (up --dataplane): userspace
	// (the default), ebpf, or kernel (ip_gre and kernel ESP, in a
	// kernel that has them).
	Dataplane string
}

// dataplane is the nodes' data plane, userspace unless set.
func (t Topology) dataplane() string {
	if t.Dataplane == "" {
		return "userspace"
	}
	return t.Dataplane
}

// ipsecMode is the IPsec mode that goes with the data plane: kernel ESP
// with ip_gre, strongSwan's userspace ESP otherwise (the ebpf fast path's
// GRE never meets the kernel's xfrm).
func (t Topology) ipsecMode() string {
	if t.dataplane() == "kernel" {
		return "kernel"
	}
	return "userspace"
}

// tunnelNet is the tunnel network of every topology (the Alpine guide's).
var tunnelNet = netip.MustParsePrefix("172.16.0.0/16")

func hub(name, nbma, tunnel string, as uint32) Node {
	return Node{Site: testbed.Site{Name: name, Kind: testbed.Hub, NBMA: netip.MustParsePrefix(nbma)}, Tunnel: netip.MustParsePrefix(tunnel), AS: as}
}

func spoke(name, nbma, tunnel, lan string, nat bool, as uint32) Node {
	return Node{
		Site:   testbed.Site{Name: name, Kind: testbed.Spoke, NBMA: netip.MustParsePrefix(nbma), LAN: netip.MustParsePrefix(lan), Hosts: 1, NAT: nat},
		Tunnel: netip.MustParsePrefix(tunnel), AS: as,
	}
}

// twoISPs gives a node a second ISP (its wan1 on the second internet
// router at nbma2): its dmvpnd fails over between the two (uplinks).
func twoISPs(n Node, nbma2 string) Node {
	n.Site.NBMA2 = netip.MustParsePrefix(nbma2)
	return n
}

// rogue is the spoke dmvpn-lab up --rogue adds: a certificate from the
// lab's CA that names the first spoke's tunnel address, while it
// registers its own.
func (t Topology) rogue() Node {
	n := spoke("rogue", "198.51.100.33/28", "172.16.4.1/16", "10.4.0.1/24", false, 65099)
	n.Site.Hosts = 0
	n.Claims = t.spokes()[0].Tunnel.Addr()
	return n
}

// withRogue returns the topology with the rogue spoke added.
func (t Topology) withRogue() Topology {
	t.Nodes = append(slices.Clone(t.Nodes), t.rogue())
	return t
}

// Topologies are the labs dmvpn-lab up can build; the first is the
// default. The hubs share a private AS, each spoke has its own, as in the
// Alpine guide: BGP runs on every node (hubs in AS 65000, spoke N in AS
// 6500N, as the certificates say).
var Topologies = []Topology{
	{
		Name:  "alpine",
		About: "the Alpine DMVPN guide: hub1, hub2, three spokes each with a LAN host, spoke3 behind NAT",
		Key:   0x12345678,
		Nodes: []Node{
			hub("hub1", "192.0.2.1/28", "172.16.0.1/16", 65000),
			hub("hub2", "192.0.2.17/28", "172.16.0.2/16", 65000),
			twoISPs(spoke("spoke1", "198.51.100.1/28", "172.16.1.1/16", "10.1.0.1/24", false, 65001), "203.0.113.65/28"),
			spoke("spoke2", "198.51.100.17/28", "172.16.2.1/16", "10.2.0.1/24", false, 65002),
			spoke("spoke3", "203.0.113.1/28", "172.16.3.1/16", "10.3.0.1/24", true, 65003),
		},
	},
	{
		Name:  "small",
		About: "one hub and two spokes with a LAN host each",
		Key:   0x12345678,
		Nodes: []Node{
			hub("hub1", "192.0.2.1/28", "172.16.0.1/16", 65000),
			twoISPs(spoke("spoke1", "198.51.100.1/28", "172.16.1.1/16", "10.1.0.1/24", false, 65001), "203.0.113.65/28"),
			spoke("spoke2", "198.51.100.17/28", "172.16.2.1/16", "10.2.0.1/24", false, 65002),
		},
	},
}

// FindTopology returns a topology by name ("" is the default).
func FindTopology(name string) (Topology, error) {
	if name == "" {
		return Topologies[0], nil
	}
	for _, t := range Topologies {
		if t.Name == name {
			return t, nil
		}
	}
	var names []string
	for _, t := range Topologies {
		names = append(names, t.Name)
	}
	return Topology{}, fmt.Errorf("unknown topology %q (known: %s)", name, strings.Join(names, ", "))
}

func (t Topology) spec(prefix string) testbed.Spec {
	s := testbed.Spec{Prefix: prefix}
	for _, n := range t.Nodes {
		s.Sites = append(s.Sites, n.Site)
	}
	return s
}

func (t Topology) hubs() []Node {
	return slices.DeleteFunc(slices.Clone(t.Nodes), func(n Node) bool { return n.Site.Kind != testbed.Hub })
}

// spokes are the legitimate spokes: the rogue is not one.
func (t Topology) spokes() []Node {
	return slices.DeleteFunc(slices.Clone(t.Nodes), func(n Node) bool { return n.Site.Kind != testbed.Spoke || n.Rogue() })
}

// rogues are the spokes whose certificate names another address.
func (t Topology) rogues() []Node {
	return slices.DeleteFunc(slices.Clone(t.Nodes), func(n Node) bool { return !n.Rogue() })
}

// config is the dmvpnd configuration file of a node; ipsec is its ipsec
// section, empty without IPsec (up --no-ipsec: the file says ipsec: off).
func (t Topology) config(n Node, socket, ipsec string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Generated by dmvpn-lab for the %q topology.\nnode: %s\nrole: %s\n", t.Name, n.Site.Name, n.Site.Kind)
	fmt.Fprintf(&b, "tunnel:\n  interface: gre1\n  address: %s\n  key: %#x\n  dataplane: %s\n  holding_time: 300\n  authentication: dmvpnlab\n", n.Tunnel, t.Key, t.dataplane())
	if n.Site.Kind == testbed.Hub {
		// The hubs reach each other (their BGP sessions) through static
		// bindings: they do not register with one another.
		var maps []string
		for _, h := range t.hubs() {
			if h.Site.Name != n.Site.Name {
				maps = append(maps, fmt.Sprintf("    - address: %s\n      nbma: %s\n", h.Tunnel.Addr(), h.Site.NBMA.Addr()))
			}
		}
		if len(maps) > 0 {
			b.WriteString("  static_maps:\n" + strings.Join(maps, ""))
		}
		fmt.Fprintf(&b, "  redirect: true\n  multicast: dynamic\npolicy:\n  allow:\n    - %s\n", tunnelNet)
	} else {
		b.WriteString("  nhs:\n")
		for i, h := range t.hubs() {
			fmt.Fprintf(&b, "    - address: %s\n      nbma: %s\n      priority: %d\n", h.Tunnel.Addr(), h.Site.NBMA.Addr(), i+1)
		}
		fmt.Fprintf(&b, "  shortcut: true\nnetworks:\n  - %s\n", n.Site.LAN.Masked())
	}
	if n.Site.NBMA2.IsValid() {
		b.WriteString(uplinksSection(n, !t.NoFirewall))
	}
	b.WriteString(t.bgpSection(n, ipsec != ""))
	fmt.Fprintf(&b, "logging:\n  level: info\n  format: console\nmetrics:\n  listen: 127.0.0.1:9474\ncontrol:\n  socket: %s\n", socket)
	if ipsec == "" {
		ipsec = "ipsec: off\n"
	}
	b.WriteString(ipsec)
	if !t.NoFirewall {
		// wan0 faces the internet; lan0 is the site's LAN (hubs have
		// none: their LAN zone is every other interface).
		b.WriteString("firewall:\n  zones:\n    internet: [wan0]\n")
		if n.Site.LAN.IsValid() {
			b.WriteString("    lan: [lan0]\n")
		}
	} else {
		b.WriteString("firewall: off\n")
	}
	return b.String()
}

// uplinksSection is the uplinks section of a node with two ISPs (the LAN
// masqueraded behind each when the node runs its firewall): isp1 on
// wan0 preferred (its gateway learnt from the default route the lab put
// there), isp2 on wan1 standing by (its gateway written: no default route
// goes through it). Both probe the hosts on the internet routers'
// loopbacks; the one only the second ISP reaches never answers through
// isp1, so isp1 holds on the other two.
func uplinksSection(n Node, masquerade bool) string {
	var probes []string
	for _, a := range append(slices.Clone(testbed.ProbeHosts), testbed.ISP2Host) {
		probes = append(probes, a.String())
	}
	list := "[" + strings.Join(probes, ", ") + "]"
	var b strings.Builder
	b.WriteString("uplinks:\n")
	fmt.Fprintf(&b, "  - name: isp1\n    interface: wan0\n    probes: %s\n    masquerade: %t\n", list, masquerade)
	fmt.Fprintf(&b, "  - name: isp2\n    interface: wan1\n    gateway: %s\n    probes: %s\n    preference: 1\n    masquerade: %t\n",
		lastHost(n.Site.NBMA2), list, masquerade)
	return b.String()
}

// lastHost is the highest usable address of an IPv4 prefix (the internet
// router's end of a site's link).
func lastHost(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v += uint32(1)<<(32-p.Bits()) - 2
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
