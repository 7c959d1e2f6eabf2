package testbed

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// NamePrefix starts every namespace this package creates; Sweep removes
// stale ones.
const NamePrefix = "dmvt"

// Node is one namespace of the topology.
type Node struct {
	// Name is the node name ("inet", "spa", "spa-h1", "spa-nat").
	Name string
	// NS is the network namespace name.
	NS string
	// Addr is the node's main address: the NBMA (uplink) address of a
	// site, the LAN address of a host, the public address of a NAT router.
	Addr netip.Addr
	// LAN is a site's LAN address, when it has one.
	LAN netip.Prefix
	// Uplink is the interface toward the internet ("wan0"), Gateway its
	// next hop.
	Uplink  string
	Gateway netip.Addr
	// Addr2, Uplink2 ("wan1") and Gateway2 are a site's second ISP
	// (Site.NBMA2), when it has one.
	Addr2    netip.Addr
	Uplink2  string
	Gateway2 netip.Addr

	tb *Testbed
}

// Testbed is a created topology. Close removes it.
type Testbed struct {
	Prefix string
	Spec   Spec

	log   Logger
	mu    sync.Mutex
	nodes map[string]*Node
	order []*Node
	procs []*Proc
	done  bool
}

// New sweeps stale namespaces of earlier runs, then creates the topology.
// On error everything created so far is removed.
func New(ctx context.Context, spec Spec, opts ...Option) (*Testbed, error) {
	if err := spec.validate(); err != nil {
		return nil, err
	}
	if err := Available(); err != nil {
		return nil, err
	}
	_ = Sweep()
	tb := &Testbed{Spec: spec, Prefix: spec.Prefix, nodes: map[string]*Node{}}
	for _, o := range opts {
		o(tb)
	}
	if tb.Prefix == "" {
		var r [3]byte
		_, _ = rand.Read(r[:])
		tb.Prefix = fmt.Sprintf("%s%dx%s", NamePrefix, os.Getpid(), hex.EncodeToString(r[:]))
	}
	if err := tb.build(ctx); err != nil {
		return nil, errors.Join(err, tb.Close())
	}
	return tb, nil
}

// Available reports what is missing to build a testbed: root (namespaces,
// veths) and the ip command.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("testbed: needs root (network namespaces)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("testbed: needs the ip command (iproute2)")
	}
	return nil
}

// Node returns a node by name, or nil.
func (tb *Testbed) Node(name string) *Node {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return tb.nodes[name]
}

// Nodes returns every node in creation order.
func (tb *Testbed) Nodes() []*Node {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return append([]*Node(nil), tb.order...)
}

func (tb *Testbed) logf(format string, args ...any) {
	if tb.log != nil {
		tb.log.Logf(format, args...)
	}
}

func (tb *Testbed) addNode(name string) (*Node, error) {
	n := &Node{Name: name, NS: tb.Prefix + "-" + name, tb: tb}
	tb.mu.Lock()
	tb.nodes[name] = n
	tb.order = append(tb.order, n)
	tb.mu.Unlock()
	if _, err := run(context.Background(), tb, "ip", "netns", "add", n.NS); err != nil {
		return nil, err
	}
	err := n.batch(
		"link set lo up",
	)
	if err == nil {
		_, err = n.Run(context.Background(), "sysctl", "-qw",
			"net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
			"net.ipv4.ip_forward=1", "net.ipv6.conf.all.disable_ipv6=1")
	}
	return n, err
}

// veth links two nodes.
func (tb *Testbed) veth(a *Node, aName string, b *Node, bName string, mtu int) error {
	_, err := run(context.Background(), tb, "ip", "link", "add", aName, "netns", a.NS, "type", "veth", "peer", "name", bName, "netns", b.NS)
	if err != nil {
		return err
	}
	if mtu == 0 {
		mtu = 1500
	}
	if err := a.batch(fmt.Sprintf("link set %s mtu %d up", aName, mtu)); err != nil {
		return err
	}
	return b.batch(fmt.Sprintf("link set %s mtu %d up", bName, mtu))
}

func (tb *Testbed) build(ctx context.Context) error {
	inet, err := tb.addNode("inet")
	if err != nil {
		return err
	}
	if err := inet.probeHosts(ProbeHosts...); err != nil {
		return err
	}
	var inet2 *Node
	for _, st := range tb.Spec.Sites {
		if st.NBMA2.IsValid() && inet2 == nil {
			if inet2, err = tb.secondISP(inet); err != nil {
				return err
			}
		}
	}
	for i, st := range tb.Spec.Sites {
		if err := ctx.Err(); err != nil {
			return err
		}
		site, err := tb.addNode(st.Name)
		if err != nil {
			return err
		}
		gw := lastHost(st.NBMA)
		upNode := site // the node holding the public NBMA address
		if st.NAT {
			nat, err := tb.addNode(st.Name + "-nat")
			if err != nil {
				return err
			}
			priv := netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 31, byte(i), 1}), 30)
			if err := tb.veth(nat, "lan0", site, "wan0", 0); err != nil {
				return err
			}
			if err := nat.batch("addr add " + priv.String() + " dev lan0"); err != nil {
				return err
			}
			if err := site.batch("addr add "+nthHost(priv, 1).String()+" dev wan0",
				"route add default via "+priv.Addr().String()); err != nil {
				return err
			}
			site.Addr, site.Uplink, site.Gateway = nthHost(priv, 1).Addr(), "wan0", priv.Addr()
			if err := nat.masquerade("wan0"); err != nil {
				return err
			}
			upNode = nat
		}
		if err := tb.veth(upNode, "wan0", inet, "to-"+st.Name, st.UplinkMTU); err != nil {
			return err
		}
		if err := upNode.batch("addr add "+st.NBMA.String()+" dev wan0", "route add default via "+gw.String()); err != nil {
			return err
		}
		if err := inet.batch(fmt.Sprintf("addr add %s/%d dev to-%s", gw, st.NBMA.Bits(), st.Name)); err != nil {
			return err
		}
		upNode.Addr = st.NBMA.Addr()
		if !st.NAT {
			site.Uplink, site.Gateway = "wan0", gw
		} else {
			upNode.Uplink, upNode.Gateway = "wan0", gw
		}
		if st.NBMA2.IsValid() {
			gw2 := lastHost(st.NBMA2)
			if err := tb.veth(site, "wan1", inet2, "to-"+st.Name, st.UplinkMTU); err != nil {
				return err
			}
			if err := site.batch("addr add " + st.NBMA2.String() + " dev wan1"); err != nil {
				return err
			}
			if err := inet2.batch(fmt.Sprintf("addr add %s/%d dev to-%s", gw2, st.NBMA2.Bits(), st.Name)); err != nil {
				return err
			}
			if err := inet.batch(fmt.Sprintf("route add %s via %s", st.NBMA2.Masked(), transitInet2.Addr())); err != nil {
				return err
			}
			site.Addr2, site.Uplink2, site.Gateway2 = st.NBMA2.Addr(), "wan1", gw2
		}
		if st.LAN.IsValid() {
			site.LAN = st.LAN
			if err := tb.lan(site, st); err != nil {
				return err
			}
		}
	}
	return nil
}

// secondISP creates inet2, the second ISP's router, linked to inet by a
// transit link: inet2 routes everything else through inet, inet reaches
// the second ISP's sites through it (routes added per site) but not its
// own probe host (ISP2Host), which answers only through the second ISP.
func (tb *Testbed) secondISP(inet *Node) (*Node, error) {
	inet2, err := tb.addNode("inet2")
	if err != nil {
		return nil, err
	}
	if err := tb.veth(inet, "to-inet2", inet2, "to-inet", 0); err != nil {
		return nil, err
	}
	if err := inet.batch("addr add " + transitInet.String() + " dev to-inet2"); err != nil {
		return nil, err
	}
	if err := inet2.batch("addr add "+transitInet2.String()+" dev to-inet", "route add default via "+transitInet.Addr().String()); err != nil {
		return nil, err
	}
	if err := inet2.probeHosts(ISP2Host); err != nil {
		return nil, err
	}
	return inet2, nil
}

// probeHosts puts addresses on the node's loopback.
func (n *Node) probeHosts(as ...netip.Addr) error {
	var lines []string
	for _, a := range as {
		lines = append(lines, "addr add "+netip.PrefixFrom(a, 32).String()+" dev lo")
	}
	return n.batch(lines...)
}

// lan attaches the site's hosts: one host by a direct veth, several
// through a bridge on the site.
func (tb *Testbed) lan(site *Node, st Site) error {
	if st.Hosts > 1 {
		if err := site.batch("link add lan0 type bridge", "link set lan0 up", "addr add "+st.LAN.String()+" dev lan0"); err != nil {
			return err
		}
	}
	for h := 1; h <= st.Hosts; h++ {
		host, err := tb.addNode(fmt.Sprintf("%s-h%d", st.Name, h))
		if err != nil {
			return err
		}
		port := "lan0"
		if st.Hosts > 1 {
			port = fmt.Sprintf("lan0p%d", h)
		}
		if err := tb.veth(site, port, host, "eth0", 0); err != nil {
			return err
		}
		if st.Hosts > 1 {
			err = site.batch("link set " + port + " master lan0")
		} else {
			err = site.batch("addr add " + st.LAN.String() + " dev lan0")
		}
		if err != nil {
			return err
		}
		addr := nthHost(st.LAN, h)
		if err := host.batch("addr add "+addr.String()+" dev eth0", "route add default via "+st.LAN.Addr().String()); err != nil {
			return err
		}
		host.Addr, host.Uplink, host.Gateway = addr.Addr(), "eth0", st.LAN.Addr()
	}
	return nil
}

// masquerade installs an nftables NAT on the node's uplink.
func (n *Node) masquerade(dev string) error {
	rules := fmt.Sprintf(`table ip testbed_nat {
	chain post { type nat hook postrouting priority srcnat; policy accept; oifname "%s" masquerade; }
}
`, dev)
	cmd := exec.Command("ip", "netns", "exec", n.NS, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("testbed: nft in %s: %w: %s", n.Name, err, out)
	}
	return nil
}

// batch runs ip commands in the node's namespace in one ip process.
func (n *Node) batch(lines ...string) error {
	cmd := exec.Command("ip", "-n", n.NS, "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	n.tb.logf("[%s] ip %s", n.Name, strings.Join(lines, "; ip "))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("testbed: ip -batch in %s (%s): %w: %s", n.Name, strings.Join(lines, "; "), err, out)
	}
	return nil
}

// IP runs `ip` commands in the node, one per argument string.
func (n *Node) IP(lines ...string) error { return n.batch(lines...) }

// Run runs a command in the node and returns its combined output.
func (n *Node) Run(ctx context.Context, args ...string) (string, error) {
	return run(ctx, n.tb, append([]string{"ip", "netns", "exec", n.NS}, args...)...)
}

func run(ctx context.Context, tb *Testbed, args ...string) (string, error) {
	tb.logf("run: %s", strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("testbed: %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Close stops every process the testbed started and deletes its
// namespaces (with anything still running in them). It reports every
// failure and is safe to call twice.
func (tb *Testbed) Close() error {
	tb.mu.Lock()
	if tb.done {
		tb.mu.Unlock()
		return nil
	}
	tb.done = true
	procs := append([]*Proc(nil), tb.procs...)
	nodes := append([]*Node(nil), tb.order...)
	tb.mu.Unlock()
	var errs []error
	for _, p := range procs {
		p.Stop()
	}
	for i := len(nodes) - 1; i >= 0; i-- {
		if err := deleteNS(nodes[i].NS); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
