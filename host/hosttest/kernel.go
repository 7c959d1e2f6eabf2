// Package hosttest is an in-memory kernel for host.Manager's tests and
// its clients' (bgp, failover, the firewall): rules in priority order,
// routes by key, xfrm policies by selector, sysctls, nftables tables and
// links, with the kernel's answers to duplicates and missing entries, a
// log of every change and a hook after each one.
package hosttest

import (
	"context"
	"fmt"
	"io/fs"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"

	"github.com/opendmvpn/dmvpn/host"
)

// Kernel is an in-memory host.Kernel. Its zero value is not usable: call
// NewKernel.
type Kernel struct {
	// OnChange, when set, is called after each change the kernel
	// accepted, with the change as logged (outside the kernel's lock: it
	// may read the kernel).
	OnChange func(change string)

	mu      sync.Mutex
	links   map[string]int
	rules   map[host.Family][]host.Rule
	routes  []host.Route
	xfrm    []host.XfrmPolicy
	sysctls map[string]string
	tables  map[host.TableID]string // → Rev
	log     []string
	fail    map[string]error
}

// NewKernel returns an empty kernel with the kernel's own rules (0 local,
// 32766 main, 32767 default) and a loopback interface (index 1).
func NewKernel() *Kernel {
	k := &Kernel{links: map[string]int{"lo": 1}, rules: map[host.Family][]host.Rule{},
		sysctls: map[string]string{}, tables: map[host.TableID]string{}, fail: map[string]error{}}
	for _, f := range []host.Family{host.IPv4, host.IPv6} {
		k.rules[f] = []host.Rule{
			{Family: f, Priority: 0, Action: host.Lookup, Table: 255},
			{Family: f, Priority: 32766, Action: host.Lookup, Table: host.Main},
		}
		if f == host.IPv4 {
			k.rules[f] = append(k.rules[f], host.Rule{Family: f, Priority: 32767, Action: host.Lookup, Table: 253})
		}
	}
	return k
}

// AddLink adds an interface.
func (k *Kernel) AddLink(name string, index int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.links[name] = index
}

// SetSysctl creates or sets a sysctl, as the kernel has it (not logged).
func (k *Kernel) SetSysctl(key, value string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.sysctls[key] = value
}

// Sysctl returns a sysctl's value.
func (k *Kernel) Sysctl(key string) (string, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	v, ok := k.sysctls[key]
	return v, ok
}

// FailOn makes the next change whose log line starts with prefix fail
// with err (once).
func (k *Kernel) FailOn(prefix string, err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.fail[prefix] = err
}

// TakeLog returns the changes since the last call.
func (k *Kernel) TakeLog() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	l := k.log
	k.log = nil
	return l
}

// change runs f under the lock, logs line if f succeeds, then calls
// OnChange.
func (k *Kernel) change(ctx context.Context, line string, f func() error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	k.mu.Lock()
	for p, err := range k.fail {
		if strings.HasPrefix(line, p) {
			delete(k.fail, p)
			k.mu.Unlock()
			return err
		}
	}
	err := f()
	if err == nil {
		k.log = append(k.log, line)
	}
	hook := k.OnChange
	k.mu.Unlock()
	if err == nil && hook != nil {
		hook(line)
	}
	return err
}

// Rules implements host.Kernel.
func (k *Kernel) Rules(ctx context.Context, f host.Family) ([]host.Rule, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.rules[f]), nil
}

// AddRule implements host.Kernel: EEXIST for a rule equal to one there,
// else inserted after the rules of its priority.
func (k *Kernel) AddRule(ctx context.Context, r host.Rule) error {
	r = r.Normal()
	return k.change(ctx, "rule add "+r.String(), func() error {
		rs := k.rules[r.Family]
		if slices.Contains(rs, r) {
			return syscall.EEXIST
		}
		i := sort.Search(len(rs), func(i int) bool { return rs[i].Priority > r.Priority })
		k.rules[r.Family] = slices.Insert(rs, i, r)
		return nil
	})
}

// DelRule implements host.Kernel: ENOENT when no rule is equal.
func (k *Kernel) DelRule(ctx context.Context, r host.Rule) error {
	r = r.Normal()
	return k.change(ctx, "rule del "+r.String(), func() error {
		rs := k.rules[r.Family]
		i := slices.Index(rs, r)
		if i < 0 {
			return syscall.ENOENT
		}
		k.rules[r.Family] = slices.Delete(rs, i, i+1)
		return nil
	})
}

type routeKey struct {
	v4     bool
	table  int
	dst    netip.Prefix
	metric int
}

func keyOf(r host.Route) routeKey {
	r = kernelRoute(r)
	return routeKey{r.Dst.Addr().Is4(), r.Table, r.Dst, r.Metric}
}

// kernelRoute is r as the kernel stores it: table 0 is main, an IPv6
// route without a metric gets 1024.
func kernelRoute(r host.Route) host.Route {
	if r.Table == 0 {
		r.Table = host.Main
	}
	if r.Metric == 0 && r.Dst.Addr().Is6() {
		r.Metric = 1024
	}
	r.Dst = r.Dst.Masked()
	return r
}

// Routes implements host.Kernel.
func (k *Kernel) Routes(ctx context.Context, f host.Family, protocol int) ([]host.Route, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []host.Route
	for _, r := range k.routes {
		if r.Dst.Addr().Is4() == (f == host.IPv4) && r.Protocol == protocol {
			out = append(out, k.named(r))
		}
	}
	return out, nil
}

// RoutesAt implements host.Kernel.
func (k *Kernel) RoutesAt(ctx context.Context, table int, dst netip.Prefix) ([]host.Route, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []host.Route
	for _, r := range k.routes {
		if x := kernelRoute(host.Route{Table: table, Dst: dst}); r.Table == x.Table && r.Dst == x.Dst {
			out = append(out, k.named(r))
		}
	}
	return out, nil
}

// TableRoutes implements host.Kernel.
func (k *Kernel) TableRoutes(ctx context.Context, f host.Family, table int) ([]host.Route, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []host.Route
	t := kernelRoute(host.Route{Table: table}).Table
	for _, r := range k.routes {
		if r.Dst.Addr().Is4() == (f == host.IPv4) && r.Table == t {
			out = append(out, k.named(r))
		}
	}
	return out, nil
}

// named returns r with its next hops' device names filled in.
func (k *Kernel) named(r host.Route) host.Route {
	r.NextHops = slices.Clone(r.NextHops)
	for i := range r.NextHops {
		for n, idx := range k.links {
			if idx == r.NextHops[i].Index {
				r.NextHops[i].Dev = n
			}
		}
	}
	return r
}

// ReplaceRoute implements host.Kernel: the first route with r's key is
// replaced in place, whatever its protocol. A next hop's Index must be
// an interface's.
func (k *Kernel) ReplaceRoute(ctx context.Context, r host.Route) error {
	r = kernelRoute(r)
	r.NextHops = slices.Clone(r.NextHops)
	for i := range r.NextHops {
		r.NextHops[i].Dev = ""
	}
	return k.change(ctx, "route replace "+k.named(r).String(), func() error {
		for _, h := range r.NextHops {
			if !k.hasIndex(h.Index) && h.Index != 0 {
				return syscall.ENODEV
			}
		}
		for i, x := range k.routes {
			if keyOf(x) == keyOf(r) {
				k.routes[i] = r
				return nil
			}
		}
		k.routes = append(k.routes, r)
		return nil
	})
}

func (k *Kernel) hasIndex(idx int) bool {
	for _, i := range k.links {
		if i == idx {
			return true
		}
	}
	return false
}

// DelRoute implements host.Kernel: ESRCH when no route has r's key and
// protocol.
func (k *Kernel) DelRoute(ctx context.Context, r host.Route) error {
	return k.change(ctx, "route del "+r.String(), func() error {
		for i, x := range k.routes {
			if keyOf(x) == keyOf(r) && x.Protocol == r.Protocol {
				k.routes = slices.Delete(k.routes, i, i+1)
				return nil
			}
		}
		return syscall.ESRCH
	})
}

// AddRoute adds a route as another program would (not logged): the
// kernel's own routes, a crashed run's leftovers.
func (k *Kernel) AddRoute(r host.Route) {
	k.mu.Lock()
	defer k.mu.Unlock()
	r = kernelRoute(r)
	r.NextHops = slices.Clone(r.NextHops)
	for i := range r.NextHops {
		if r.NextHops[i].Dev != "" {
			r.NextHops[i].Index = k.links[r.NextHops[i].Dev]
			r.NextHops[i].Dev = ""
		}
	}
	k.routes = append(k.routes, r)
}

// AddRuleDirect and AddXfrmDirect add entries as another program would
// (not logged).
func (k *Kernel) AddRuleDirect(r host.Rule) {
	r = r.Normal()
	k.mu.Lock()
	defer k.mu.Unlock()
	rs := k.rules[r.Family]
	i := sort.Search(len(rs), func(i int) bool { return rs[i].Priority > r.Priority })
	k.rules[r.Family] = slices.Insert(rs, i, r)
}

// AddXfrmDirect adds a policy as another program would (not logged).
func (k *Kernel) AddXfrmDirect(p host.XfrmPolicy) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.xfrm = append(k.xfrm, p)
}

// XfrmPolicies implements host.Kernel.
func (k *Kernel) XfrmPolicies(ctx context.Context) ([]host.XfrmPolicy, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.xfrm), nil
}

func sameSelector(a, b host.XfrmPolicy) bool {
	return a.Dir == b.Dir && a.Src.Masked() == b.Src.Masked() && a.Dst.Masked() == b.Dst.Masked() && a.Proto == b.Proto
}

// UpdateXfrmPolicy implements host.Kernel: in place when the selector and
// direction exist.
func (k *Kernel) UpdateXfrmPolicy(ctx context.Context, p host.XfrmPolicy) error {
	return k.change(ctx, "xfrm update "+p.String(), func() error {
		for i, x := range k.xfrm {
			if sameSelector(x, p) {
				k.xfrm[i] = p
				return nil
			}
		}
		k.xfrm = append(k.xfrm, p)
		return nil
	})
}

// DelXfrmPolicy implements host.Kernel: ENOENT when none matches.
func (k *Kernel) DelXfrmPolicy(ctx context.Context, p host.XfrmPolicy) error {
	return k.change(ctx, "xfrm del "+p.String(), func() error {
		for i, x := range k.xfrm {
			if sameSelector(x, p) {
				k.xfrm = slices.Delete(k.xfrm, i, i+1)
				return nil
			}
		}
		return syscall.ENOENT
	})
}

// ReadSysctl implements host.Kernel.
func (k *Kernel) ReadSysctl(key string) (string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	v, ok := k.sysctls[key]
	if !ok {
		return "", fs.ErrNotExist
	}
	return v + "\n", nil
}

// WriteSysctl implements host.Kernel: a key the kernel lacks cannot be
// created.
func (k *Kernel) WriteSysctl(key, value string) error {
	return k.change(context.Background(), "sysctl "+key+" = "+value, func() error {
		if _, ok := k.sysctls[key]; !ok {
			return fs.ErrNotExist
		}
		k.sysctls[key] = value
		return nil
	})
}

// NFTables implements host.Kernel.
func (k *Kernel) NFTables(ctx context.Context) ([]host.TableID, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []host.TableID
	for id := range k.tables {
		out = append(out, id)
	}
	return out, nil
}

// ReplaceNFTable implements host.Kernel. Build runs against a batch that
// is never sent (runBuild), so its errors come back as they would.
func (k *Kernel) ReplaceNFTable(ctx context.Context, t host.NFTable) error {
	return k.change(ctx, fmt.Sprintf("nft replace %v rev %s", t.TableID, t.Rev), func() error {
		if err := runBuild(t); err != nil {
			return err
		}
		k.tables[t.TableID] = t.Rev
		return nil
	})
}

// DelNFTable implements host.Kernel: ENOENT when the table is missing.
func (k *Kernel) DelNFTable(ctx context.Context, id host.TableID) error {
	return k.change(ctx, fmt.Sprintf("nft delete %v", id), func() error {
		if _, ok := k.tables[id]; !ok {
			return syscall.ENOENT
		}
		delete(k.tables, id)
		return nil
	})
}

// LinkIndex implements host.Kernel.
func (k *Kernel) LinkIndex(name string) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	i, ok := k.links[name]
	if !ok {
		return 0, fmt.Errorf("interface %s: %w", name, syscall.ENODEV)
	}
	return i, nil
}

// Dump writes the whole kernel state, one entry a line, sorted within
// each kind: what golden tests compare.
func (k *Kernel) Dump() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	var b strings.Builder
	for _, f := range []host.Family{host.IPv4, host.IPv6} {
		for _, r := range k.rules[f] {
			fmt.Fprintf(&b, "rule %v\n", r)
		}
	}
	var lines []string
	for _, r := range k.routes {
		lines = append(lines, "route "+k.named(r).String())
	}
	for _, p := range k.xfrm {
		lines = append(lines, p.String())
	}
	for key, v := range k.sysctls {
		lines = append(lines, "sysctl "+key+" = "+v)
	}
	for id, rev := range k.tables {
		lines = append(lines, fmt.Sprintf("nft %v rev %s", id, rev))
	}
	sort.Strings(lines)
	for _, l := range lines {
		b.WriteString(l + "\n")
	}
	return b.String()
}
