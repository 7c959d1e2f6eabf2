//go:build linux

package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"

	"github.com/opendmvpn/dmvpn/firewall/redirect"
	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// kernelRouter answers the engine's route questions from the kernel's
// routing tables.
type kernelRouter struct {
	tunIndex int
	tunName  string
	mu       sync.Mutex
	networks []netip.Prefix
}

func newKernelRouter(info gre.Info, cfg Config) (*kernelRouter, error) {
	return &kernelRouter{tunIndex: info.Index, tunName: info.Name, networks: cfg.Networks}, nil
}

func (r *kernelRouter) setNetworks(n []netip.Prefix) {
	r.mu.Lock()
	r.networks = n
	r.mu.Unlock()
}

// Route implements nhrp.Router. A destination through the tunnel has the
// route's gateway (or itself) as next hop. A destination elsewhere is
// local — answerable in resolutions — when it is in the configured
// networks, or, without configured networks, when the most specific route
// to it is not the default route and not through an uplink (an interface
// that carries a default route).
func (r *kernelRouter) Route(ctx context.Context, dst netip.Addr) (nhrp.RouteInfo, error) {
	r.mu.Lock()
	nets := r.networks
	r.mu.Unlock()
	for _, p := range nets {
		if p.Contains(dst) {
			return nhrp.RouteInfo{Prefix: p, Local: true}, nil
		}
	}
	rs, err := netlink.RouteGet(net.IP(dst.AsSlice()))
	if err != nil || len(rs) == 0 {
		return nhrp.RouteInfo{}, fmt.Errorf("route to %s: %w", dst, err)
	}
	got := rs[0]
	if got.LinkIndex == r.tunIndex {
		nh := dst
		if gw, ok := netip.AddrFromSlice(got.Gw); ok && got.Gw != nil {
			nh = gw.Unmap()
		}
		return nhrp.RouteInfo{Prefix: netip.PrefixFrom(dst, dst.BitLen()), NextHop: nh}, nil
	}
	if len(nets) > 0 {
		return nhrp.RouteInfo{Prefix: netip.PrefixFrom(dst, dst.BitLen())}, nil
	}
	family := netlink.FAMILY_V4
	if dst.Is6() {
		family = netlink.FAMILY_V6
	}
	all, err := netlink.RouteListFiltered(family, &netlink.Route{Table: syscall.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nhrp.RouteInfo{}, err
	}
	uplinks := map[int]bool{}
	best := netip.Prefix{}
	bestLink := 0
	for _, rt := range all {
		if rt.Dst == nil {
			uplinks[rt.LinkIndex] = true
			for _, nh := range rt.MultiPath {
				uplinks[nh.LinkIndex] = true
			}
			continue
		}
		ones, _ := rt.Dst.Mask.Size()
		a, ok := netip.AddrFromSlice(rt.Dst.IP)
		if !ok {
			continue
		}
		p := netip.PrefixFrom(a.Unmap(), ones)
		if ones == 0 {
			uplinks[rt.LinkIndex] = true
			continue
		}
		if p.Contains(dst) && p.Bits() > best.Bits() {
			best, bestLink = p, rt.LinkIndex
		}
	}
	if best.IsValid() && bestLink != r.tunIndex && !uplinks[bestLink] {
		return nhrp.RouteInfo{Prefix: best.Masked(), Local: true}, nil
	}
	return nhrp.RouteInfo{Prefix: best.Masked()}, nil
}

// Source returns the local address the kernel uses toward dst: this
// node's NBMA address toward a peer.
func (r *kernelRouter) Source(ctx context.Context, dst netip.Addr) (netip.Addr, error) {
	rs, err := netlink.RouteGet(net.IP(dst.AsSlice()))
	if err != nil || len(rs) == 0 {
		return netip.Addr{}, fmt.Errorf("route to %s: %w", dst, err)
	}
	a, ok := netip.AddrFromSlice(rs[0].Src)
	if !ok {
		return netip.Addr{}, fmt.Errorf("no source address toward %s", dst)
	}
	return a.Unmap(), nil
}

// addShortcutRule makes the shortcut table take precedence over the main
// table. It returns the undo.
func addShortcutRule(table, prio int, v4 bool) (func() error, error) {
	family := netlink.FAMILY_V4
	if !v4 {
		family = netlink.FAMILY_V6
	}
	rule := netlink.NewRule()
	rule.Table, rule.Priority, rule.Family = table, prio, family
	rules, err := netlink.RuleList(family)
	if err != nil {
		return nil, err
	}
	exists := false
	for _, x := range rules {
		if x.Table == table && x.Priority == prio {
			exists = true
		}
	}
	if !exists {
		if err := netlink.RuleAdd(rule); err != nil {
			return nil, err
		}
	}
	return func() error {
		if err := netlink.RuleDel(rule); err != nil && !errors.Is(err, syscall.ENOENT) {
			return fmt.Errorf("removing the shortcut rule: %w", err)
		}
		return nil
	}, nil
}

// sysctls sets what a DMVPN node needs: forwarding (when configured) and
// no ICMP redirects on the tunnel (a hub relays between clients through
// the same interface; a redirect would be wrong: NHRP does that job).
func (d *Daemon) sysctls(cfg Config, info gre.Info) error {
	set := func(path, v string) error {
		if err := os.WriteFile(path, []byte(v), 0o644); err != nil {
			return fmt.Errorf("sysctl %s: %w", path, err)
		}
		return nil
	}
	var errs []error
	if cfg.Forwarding {
		if info.Prefix.Addr().Is4() {
			errs = append(errs, set("/proc/sys/net/ipv4/ip_forward", "1"))
		} else {
			errs = append(errs, set("/proc/sys/net/ipv6/conf/all/forwarding", "1"))
		}
	}
	if info.Prefix.Addr().Is4() {
		errs = append(errs,
			set("/proc/sys/net/ipv4/conf/all/send_redirects", "0"),
			set("/proc/sys/net/ipv4/conf/"+info.Name+"/send_redirects", "0"))
	}
	// A hub on ip_gre keeps a kernel neighbour entry per registered spoke:
	// the default table limit (gc_thresh3 = 1024) would stop it at about
	// a thousand spokes. Raise the limits, never lower them.
	if cfg.NHRP.Role == nhrp.RoleHub && info.Backend == "kernel" {
		fam := "ipv4"
		if !info.Prefix.Addr().Is4() {
			fam = "ipv6"
		}
		raised, err := raiseNeighLimits("/proc/sys", fam)
		errs = append(errs, err)
		if !raised {
			d.log.Info("the neighbour table limits (gc_thresh1-3) exist in the initial network namespace only: set them there for a hub of more than about 1000 spokes",
				zap.String("family", fam))
		}
	}
	// On ip_gre the kernel marks a neighbour used only when traffic finds
	// it stale and it is confirmed again, every base_reachable_time (15–45
	// s by default): with shortcut_idle, confirm sooner, so that a busy
	// shortcut is never taken for an idle one.
	if info.Backend == "kernel" && cfg.NHRP.ShortcutIdle > 0 {
		fam := "ipv4"
		if !info.Prefix.Addr().Is4() {
			fam = "ipv6"
		}
		errs = append(errs, confirmNeighbors("/proc/sys", fam, info.Name, cfg.NHRP.ShortcutIdle))
	}
	return errors.Join(errs...)
}

// confirmNeighbors sets the tunnel device's neighbour timers under the
// sysctl root so that an entry in use is confirmed again (and marked used)
// within a quarter of idle or so: base_reachable_time_ms = idle/4 (at
// least 1 s; only ever lowered from the kernel's 30 s) and
// delay_first_probe_time = 1 s. Each confirmation of an entry in use is
// one app probe (RTM_GETNEIGH) the engine answers by programming the entry
// again.
func confirmNeighbors(root, fam, dev string, idle time.Duration) error {
	base := idle / 4
	if base < time.Second {
		base = time.Second
	}
	if base >= 30*time.Second {
		return nil
	}
	dir := filepath.Join(root, "net", fam, "neigh", dev)
	var errs []error
	for name, v := range map[string]int64{
		"base_reachable_time_ms": base.Milliseconds(),
		"delay_first_probe_time": 1,
	} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(fmt.Sprint(v)), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("sysctl %s: %w", path, err))
		}
	}
	return errors.Join(errs...)
}

// neighLimits are the gc_thresh1-3 values a hub on ip_gre wants at least.
var neighLimits = [3]int{16384, 32768, 65536}

// raiseNeighLimits raises net.<fam>.neigh.default.gc_thresh1-3 under the
// sysctl root to neighLimits, never lowering them. The kernel has them in
// the initial network namespace only (the neighbour tables are shared by
// all namespaces): elsewhere they do not exist, nothing is written and
// raised is false.
func raiseNeighLimits(root, fam string) (raised bool, err error) {
	var errs []error
	for i, v := range neighLimits {
		path := filepath.Join(root, "net", fam, "neigh", "default", fmt.Sprintf("gc_thresh%d", i+1))
		cur, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		if err == nil {
			var n int
			if _, err := fmt.Sscan(string(cur), &n); err == nil && n >= v {
				continue
			}
		}
		if err := os.WriteFile(path, []byte(fmt.Sprint(v)), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("sysctl %s: %w", path, err))
		}
	}
	return true, errors.Join(errs...)
}

// startRedirect starts the hub's redirect detection.
func startRedirect(ctx context.Context, cfg Config, eng *nhrp.Engine) (redirect.Watcher, error) {
	w, err := redirect.Start(context.WithoutCancel(ctx), redirect.Config{Interface: cfg.Tunnel.Name, Group: cfg.RedirectGroup}, eng.Relayed)
	if err != nil {
		return nil, err
	}
	return w, nil
}
