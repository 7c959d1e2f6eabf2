package host

import (
	"context"
	"errors"
	"net/netip"
)

// Kernel is the kernel as the Manager reads and writes it. NewKernel
// returns Linux's (netlink, /proc/sys, nftables); hosttest.Kernel is an
// in-memory one for tests. Each method is one short kernel request; ctx
// is checked between requests.
type Kernel interface {
	// Rules lists the policy rules of a family, in the kernel's order.
	Rules(ctx context.Context, f Family) ([]Rule, error)
	// AddRule adds a rule after those of the same priority.
	AddRule(ctx context.Context, r Rule) error
	// DelRule deletes the first rule equal to r.
	DelRule(ctx context.Context, r Rule) error

	// Routes lists the routes of a family with a protocol, in every table.
	// Their next hops carry Index (and Dev when the interface is known).
	Routes(ctx context.Context, f Family, protocol int) ([]Route, error)
	// RoutesAt lists the routes to exactly dst in a table, whatever their
	// protocol and metric.
	RoutesAt(ctx context.Context, table int, dst netip.Prefix) ([]Route, error)
	// TableRoutes lists every route of a family in a table, whatever its
	// protocol (one dump, for a Set of many routes).
	TableRoutes(ctx context.Context, f Family, table int) ([]Route, error)
	// ReplaceRoute adds r or replaces the route with its key in place.
	// Next hops carry Index (the Manager resolves Dev).
	ReplaceRoute(ctx context.Context, r Route) error
	// DelRoute deletes the route with r's key and protocol.
	DelRoute(ctx context.Context, r Route) error

	// XfrmPolicies lists the xfrm policies without templates.
	XfrmPolicies(ctx context.Context) ([]XfrmPolicy, error)
	// UpdateXfrmPolicy adds p or replaces the policy with its key in
	// place.
	UpdateXfrmPolicy(ctx context.Context, p XfrmPolicy) error
	// DelXfrmPolicy deletes the policy with p's key.
	DelXfrmPolicy(ctx context.Context, p XfrmPolicy) error

	// ReadSysctl reads a sysctl (fs.ErrNotExist when the kernel has none
	// by that key).
	ReadSysctl(key string) (string, error)
	// WriteSysctl writes a sysctl.
	WriteSysctl(key, value string) error

	// NFTables lists the nftables tables.
	NFTables(ctx context.Context) ([]TableID, error)
	// ReplaceNFTable replaces (or creates) a whole table in one
	// transaction.
	ReplaceNFTable(ctx context.Context, t NFTable) error
	// DelNFTable deletes a table.
	DelNFTable(ctx context.Context, id TableID) error

	// LinkIndex returns an interface's index.
	LinkIndex(name string) (int, error)
}

// ErrUnsupported is returned where the kernel state cannot be reached
// (not Linux).
var ErrUnsupported = errors.New("host: needs Linux")
