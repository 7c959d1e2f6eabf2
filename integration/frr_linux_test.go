package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/lab/testbed"
)

// FRR's nhrpd (Debian's FRR 8.4), the NHRP implementation this project
// interoperates with, run in a testbed node: zebra and nhrpd in their own
// path space (-N, the node's namespace name), no TCP vty (-P 0), the mGRE
// device created beforehand as FRR's documentation does. No IPsec: FRR
// needs a patched strongSwan for it.

// frrDir is where FRR's binaries are.
const frrDir = "/usr/lib/frr"

// frrConfig describes an FRR node.
type frrConfig struct {
	// Tunnel is the node's tunnel address (a /32 on gre1, as FRR wants).
	Tunnel netip.Addr
	// Hub makes the node a next hop server that sends redirects.
	Hub bool
	// NHS is a spoke's server, by NBMA address ("nhs dynamic": the
	// server's tunnel address is learned from its reply).
	NHS netip.Addr
	// NoUnique clears the unique flag of the registrations.
	NoUnique bool
	// HoldTime of the registrations, in seconds; 0 is FRR's default
	// (7200).
	HoldTime int
}

// frrNode is zebra and nhrpd running in a testbed node.
type frrNode struct {
	t     *testing.T
	name  string
	node  *testbed.Node
	cfg   frrConfig
	dir   string // /run/frr/<path space>: sockets, configuration, logs
	space string
	zebra *testbed.Proc
	nhrpd *testbed.Proc
}

// frrGroup is the NFLOG group of the FRR hub's redirect rule.
const frrGroup = 1

// requireFRR fails t when FRR is missing: make test installs it.
func requireFRR(t *testing.T) {
	t.Helper()
	for _, d := range []string{"zebra", "nhrpd"} {
		if _, err := os.Stat(filepath.Join(frrDir, d)); err != nil {
			t.Fatalf("FRR is not installed (%v): make test installs it (apt-get install frr)", err)
		}
	}
}

// startFRR creates the node's mGRE device (key 42, TTL 64, bound to the
// uplink) and starts zebra and nhrpd with cfg; a hub also gets the
// nftables rule that logs relayed packets to NFLOG for nhrpd's redirects.
func startFRR(t *testing.T, n *testbed.Node, cfg frrConfig) *frrNode {
	t.Helper()
	requireFRR(t)
	f := &frrNode{t: t, name: n.Name, node: n, cfg: cfg, space: n.NS, dir: filepath.Join("/run/frr", n.NS)}
	// The device as FRR's documentation creates it. Bound to the uplink
	// from the start: when nhrpd's "tunnel source" makes zebra change the
	// device's link, FRR 8.4's zebra drops the GRE key (its packets then
	// leave without one, and no keyed peer accepts them).
	if err := n.IP(
		fmt.Sprintf("link add gre1 type gre key 42 ttl 64 local %s dev %s", n.Addr, n.Uplink),
		"link set gre1 up",
	); err != nil {
		t.Fatal(err)
	}
	uid, gid := frrIDs(t)
	etc := filepath.Join("/etc/frr", f.space)
	for _, d := range []string{f.dir, etc} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { os.RemoveAll(f.dir); os.RemoveAll(etc) })
	if err := os.Chown(f.dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		filepath.Join(etc, "vtysh.conf"):   "",
		filepath.Join(f.dir, "zebra.conf"): f.zebraConf(),
		filepath.Join(f.dir, "nhrpd.conf"): f.nhrpdConf(),
		filepath.Join(f.dir, "nhrpd.log"):  "",
		filepath.Join(f.dir, "zebra.log"):  "",
	}
	for path, content := range files {
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(path, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	if cfg.Hub {
		f.redirectRule()
	}
	f.zebra = f.start("zebra")
	socket := filepath.Join(f.dir, "zserv.api")
	waitFor(t, 20*time.Second, f.name+": zebra's socket", func() bool { _, err := os.Stat(socket); return err == nil })
	f.nhrpd = f.start("nhrpd")
	t.Cleanup(func() {
		if t.Failed() {
			f.logState()
		}
	})
	return f
}

// frrIDs returns the frr user's uid and gid.
func frrIDs(t *testing.T) (int, int) {
	t.Helper()
	u, err := user.Lookup("frr")
	if err != nil {
		t.Fatalf("no frr user (is FRR installed?): %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return uid, gid
}

func (f *frrNode) start(daemon string) *testbed.Proc {
	f.t.Helper()
	p, err := f.node.Start(testbed.ProcSpec{Name: daemon + "-" + f.name, Args: []string{
		filepath.Join(frrDir, daemon), "-N", f.space, "-P", "0",
		"-f", filepath.Join(f.dir, daemon+".conf"), "-i", filepath.Join(f.dir, daemon+".pid"),
	}})
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(p.Stop)
	return p
}

func (f *frrNode) zebraConf() string {
	return fmt.Sprintf("hostname %s\nlog file %s/zebra.log\ninterface gre1\n ip address %s/32\nexit\n",
		f.name, f.dir, f.cfg.Tunnel)
}

func (f *frrNode) nhrpdConf() string {
	var b strings.Builder
	fmt.Fprintf(&b, "hostname %s\nlog file %s/nhrpd.log debugging\ndebug nhrp common\ndebug nhrp event\n", f.name, f.dir)
	if f.cfg.Hub {
		fmt.Fprintf(&b, "nhrp nflog-group %d\n", frrGroup)
	}
	b.WriteString("interface gre1\n ip nhrp network-id 1\n")
	if f.cfg.HoldTime > 0 {
		fmt.Fprintf(&b, " ip nhrp holdtime %d\n", f.cfg.HoldTime)
	}
	if f.cfg.NHS.IsValid() {
		fmt.Fprintf(&b, " ip nhrp nhs dynamic nbma %s\n", f.cfg.NHS)
	}
	if f.cfg.NoUnique {
		b.WriteString(" ip nhrp registration no-unique\n")
	}
	b.WriteString(" ip nhrp shortcut\n")
	if f.cfg.Hub {
		b.WriteString(" ip nhrp redirect\n")
	}
	fmt.Fprintf(&b, " tunnel source %s\nexit\n", f.node.Uplink)
	return b.String()
}

// redirectRule is FRR's documented iptables rule in nftables: relayed
// packets (in and out of the tunnel) logged to nhrpd's NFLOG group, limited
// per source and destination (hashlimit's job in the documentation).
func (f *frrNode) redirectRule() {
	f.t.Helper()
	rules := fmt.Sprintf(`table inet frr_nhrp {
	chain forward {
		type filter hook forward priority 0; policy accept;
		iifname "gre1" oifname "gre1" meter tiflows { ip saddr . ip daddr limit rate 4/minute burst 1 packets } log group %d snaplen 128
	}
}
`, frrGroup)
	path := filepath.Join(f.t.TempDir(), "frr-redirect.nft")
	if err := os.WriteFile(path, []byte(rules), 0o644); err != nil {
		f.t.Fatal(err)
	}
	// The first nft of a VM loads nf_tables and its expressions' modules:
	// under TCG on a loaded machine that took more than 20 s.
	ctx, cancel := context.WithTimeout(context.Background(), slowVM(20*time.Second))
	defer cancel()
	if out, err := f.node.Run(ctx, "nft", "-f", path); err != nil {
		f.t.Fatalf("%s: redirect rule: %v\n%s", f.name, err, out)
	}
}

// vtysh runs show commands against this node's daemons (slow under TCG:
// for diagnostics and one-time checks).
func (f *frrNode) vtysh(cmds ...string) (string, error) {
	args := []string{"vtysh", "-N", f.space}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return f.node.Run(ctx, args...)
}

// logState logs FRR's view and its logs (on failure).
func (f *frrNode) logState() {
	out, err := f.vtysh("show dmvpn", "show ip nhrp cache", "show ip nhrp nhs", "show ip nhrp shortcut", "show ip route")
	f.t.Logf("%s: FRR state (%v):\n%s", f.name, err, out)
	for _, l := range []string{"nhrpd.log", "zebra.log"} {
		b, _ := os.ReadFile(filepath.Join(f.dir, l))
		if len(b) > 20000 {
			b = b[len(b)-20000:]
		}
		f.t.Logf("%s: %s:\n%s", f.name, l, b)
	}
}

// logged returns the lines of nhrpd's log that contain s.
func (f *frrNode) logged(s string) []string {
	b, _ := os.ReadFile(filepath.Join(f.dir, "nhrpd.log"))
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return out
}

// ipJSON runs `ip -j ARGS` in a node and decodes the output into v.
func ipJSON(n *testbed.Node, v any, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := n.Run(ctx, append([]string{"ip", "-j"}, args...)...)
	if err != nil {
		return err
	}
	if strings.TrimSpace(out) == "" {
		out = "[]"
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		return fmt.Errorf("ip %v: %w: %s", args, err, out)
	}
	return nil
}

// neighbor returns the lladdr (NBMA address) of a tunnel neighbour in the
// kernel of a node, where FRR keeps its bindings.
func neighbor(n *testbed.Node, proto netip.Addr) (netip.Addr, bool) {
	var ns []struct {
		Dst    string   `json:"dst"`
		LLAddr string   `json:"lladdr"`
		State  []string `json:"state"`
	}
	if err := ipJSON(n, &ns, "neigh", "show", "dev", "gre1", "to", proto.String()); err != nil {
		return netip.Addr{}, false
	}
	for _, x := range ns {
		if x.Dst == proto.String() && x.LLAddr != "" {
			a, err := netip.ParseAddr(x.LLAddr)
			return a, err == nil
		}
	}
	return netip.Addr{}, false
}

// registration is the NBMA address the FRR hub bound a tunnel address to:
// nhrpd programs a kernel neighbour for each registered client.
func (f *frrNode) registration(tunnel netip.Addr) (netip.Addr, bool) {
	return neighbor(f.node, tunnel)
}

// shortcut is FRR's shortcut route to a network (zebra installs it in the
// kernel, protocol nhrp) and the NBMA address of its next hop.
func (f *frrNode) shortcut(lan netip.Prefix) (netip.Addr, netip.Addr, bool) {
	var rs []struct {
		Gateway  string `json:"gateway"`
		Dev      string `json:"dev"`
		Protocol string `json:"protocol"`
	}
	if err := ipJSON(f.node, &rs, "route", "show", lan.String(), "proto", "nhrp"); err != nil || len(rs) != 1 || rs[0].Dev != "gre1" {
		return netip.Addr{}, netip.Addr{}, false
	}
	via, err := netip.ParseAddr(rs[0].Gateway)
	if err != nil {
		return netip.Addr{}, netip.Addr{}, false
	}
	nbma, ok := neighbor(f.node, via)
	return via, nbma, ok
}

// frrVersion returns the installed FRR's version line, for the logs.
func frrVersion() string {
	out, err := exec.Command(filepath.Join(frrDir, "nhrpd"), "--version").CombinedOutput()
	if err != nil {
		return "unknown"
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line)
}
