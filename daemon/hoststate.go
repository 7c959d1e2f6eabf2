package daemon

import (
	"fmt"
	"path"
	"time"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/host"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// neighLimits returns the gc_thresh1-3 values a hub whose neighbours are
// the kernel's wants at least, sized from the most cache entries it may
// hold (limits.max_entries; 0 is the engine's default, 262,144): a kernel
// neighbour per entry plus the kernel's default 1024 for the host's other
// interfaces, all three. The kernel collects unreferenced neighbours
// whenever the table holds more than gc_thresh1 (those unused for 60 s)
// and more than gc_thresh2 (those not updated in the last 5 s, at each new
// entry): a registered spoke's entry is such a neighbour between its
// refreshes, so with the kernel's proportions (a quarter and a half of
// gc_thresh3) a hub of 100,000 spokes kept fewer than 28,000 of them
// (bench-nhrp-kscale). With all three at the hard limit nothing is
// collected while the table has room; at the limit a new entry is
// refused (ENOBUFS, counted as table_full and retried).
func neighLimits(maxEntries int) [3]int {
	if maxEntries <= 0 {
		maxEntries = nhrp.DefaultMaxEntries
	}
	t := maxEntries + 1024
	return [3]int{t, t, t}
}

// hostOwner is what the daemon itself owns in the host state: the rule
// that puts the shortcut table ahead of main.
func hostOwner(cfg Config) host.Owner {
	return host.Owner{Name: "daemon", RulePriorities: []int{cfg.ShortcutRulePriority}}
}

// hostState is what the daemon itself sets in the kernel beside the
// tunnel: the shortcut table's rule, forwarding (when configured), no
// ICMP redirects on the tunnel (a hub relays between clients through the
// same interface; NHRP does a redirect's job), and, where the neighbours
// are the kernel's, their table limits (hubs) and timers
// (shortcut_idle). Forwarding and the others stay as set on stop.
func hostState(cfg Config, info gre.Info) *host.Config {
	v4 := info.Prefix.Addr().Is4()
	fam, family := "ipv4", host.IPv4
	if !v4 {
		fam, family = "ipv6", host.IPv6
	}
	hc := &host.Config{}
	if cfg.NHRP.Shortcut {
		hc.Rules = append(hc.Rules, host.Rule{Family: family, Priority: cfg.ShortcutRulePriority,
			Action: host.Lookup, Table: cfg.NHRP.ShortcutTableOrDefault()})
	}
	if cfg.Forwarding {
		if v4 {
			hc.Sysctls = append(hc.Sysctls, host.Sysctl{Key: "net/ipv4/ip_forward", Value: "1"})
		} else {
			hc.Sysctls = append(hc.Sysctls, host.Sysctl{Key: "net/ipv6/conf/all/forwarding", Value: "1"})
		}
	}
	if v4 {
		hc.Sysctls = append(hc.Sysctls,
			host.Sysctl{Key: "net/ipv4/conf/all/send_redirects", Value: "0"},
			host.Sysctl{Key: path.Join("net/ipv4/conf", info.Name, "send_redirects"), Value: "0"})
	}
	// A hub on ip_gre keeps a kernel neighbour entry per registered
	// spoke: the default table limit (gc_thresh3 = 1024) would stop it at
	// about a thousand spokes. Raise the limits, never lower them; they
	// exist in the initial network namespace only.
	if cfg.NHRP.Role == nhrp.RoleHub && info.Caps.KernelNeighbors {
		for i, v := range neighLimits(cfg.NHRP.Limits.MaxEntries) {
			hc.Sysctls = append(hc.Sysctls, host.Sysctl{Key: neighLimitKey(fam, i), Value: fmt.Sprint(v), AtLeast: true, Optional: true})
		}
	}
	// The kernel marks a neighbour used only when traffic finds it stale
	// and it is confirmed again, every base_reachable_time (15–45 s by
	// default): with shortcut_idle, confirm within a quarter of it (at
	// least 1 s; only ever lowered from the kernel's 30 s), so that a busy
	// shortcut is never taken for an idle one. Each confirmation of an
	// entry in use is one app probe the engine answers.
	if info.Caps.KernelNeighbors && cfg.NHRP.ShortcutIdle > 0 {
		if base := max(cfg.NHRP.ShortcutIdle/4, time.Second); base < 30*time.Second {
			dir := path.Join("net", fam, "neigh", info.Name)
			hc.Sysctls = append(hc.Sysctls,
				host.Sysctl{Key: path.Join(dir, "base_reachable_time_ms"), Value: fmt.Sprint(base.Milliseconds())},
				host.Sysctl{Key: path.Join(dir, "delay_first_probe_time"), Value: "1"})
		}
	}
	return hc
}

func neighLimitKey(fam string, i int) string {
	return fmt.Sprintf("net/%s/neigh/default/gc_thresh%d", fam, i+1)
}
