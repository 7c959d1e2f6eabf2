// Package host is the one owner of the kernel state dmvpnd sets beside
// the tunnel device: policy rules, routes by protocol number (in any
// table, multipath included), sysctls, xfrm catch-all policies and whole
// nftables tables. Nothing else in dmvpnd writes those; it reads them
// through RouteCache.
//
// The model is Tailscale's router.Set, shared by several clients. One
// Manager per process; each client (the daemon, ipsec, bgp, failover, the
// firewall) gets a Client from Manager.Client, naming in an Owner what it
// owns in the kernel:
//
//   - rules: every rule at one of Owner.RulePriorities (either family);
//   - routes: every route with protocol Owner.RouteProtocol, in any table;
//   - xfrm policies: every policy at one of Owner.XfrmPriorities;
//   - nftables tables: the tables named in Owner.Tables;
//   - sysctls: the keys its Config sets (two clients may not set one key).
//
// No two clients may share an identifier. Client.Set(ctx, cfg) replaces
// that client's desired state: it reads what the kernel has under the
// client's identifiers, computes the difference and applies only that —
// new and changed entries first (routes and xfrm policies replaced in
// place, rules added beside the old), then the deletion of what is no
// longer desired — so there is no instant where neither the old nor the
// new entry is in force. Because the difference is always taken against
// the kernel, the first Set after a crash adopts the leftovers it still
// wants and removes the others, and Set is safe to call twice. Every
// failure is reported (errors.Join); when an addition fails nothing is
// deleted (the old entries stay in force until a Set succeeds).
//
// Client.Close removes everything the client owns and restores the
// sysctls it set with Restore; Client.Leave releases the client and
// leaves its state in the kernel for the next run to adopt (dmvpnd
// --keep-routes: the tunnel and the protection of GRE stay).
//
// With a state file (Options.StateFile) what must be put back survives a
// crash (the sysctls' earlier values, the other programs' routes a route
// replaced), and so does, per client name, every identifier the client
// may have left entries at. A client whose identifiers changed between
// runs (another rule priority, route protocol, xfrm priority or table)
// has its first Set remove what sits at the old ones, after the
// additions; Manager.Sweep removes, as Close would, what the clients of
// an earlier run that did not register in this one left. Identifiers
// another client owns now are never touched.
//
// nftables: the firewall supplies a whole table as an NFTable whose Build
// adds its chains, sets and rules to a Conn; the Manager replaces the
// table in one transaction (add table, delete table, add table, Build,
// one Flush), so the old rules stay in force until the new ones are, and
// deletes it on Close. It is replaced when its Rev changes or it is
// missing from the kernel.
//
// The kernel is reached through the Kernel interface: Linux's netlink
// (NewKernel) in production, the in-memory hosttest.Kernel in tests.
package host
