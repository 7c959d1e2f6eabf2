package ctl

import (
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/opendmvpn/dmvpn/bgp"
	"github.com/opendmvpn/dmvpn/daemon/control"
)

// newShowBGP is `show ip bgp [PREFIX]`, `show ip bgp summary` and `show
// ip bgp neighbors [ADDRESS] [received-routes|advertised-routes]`.
func newShowBGP(e *env) *cobra.Command {
	c := withOptArg(&cobra.Command{Use: "bgp", Short: "BGP information: the RIB, or one prefix's paths",
		RunE: func(cmd *cobra.Command, args []string) error {
			q := url.Values{}
			arg := freeArg(cmd, args)
			if arg != "" {
				p, err := parsePrefixArg(arg)
				if err != nil {
					return err
				}
				q.Set("prefix", p)
			}
			var rs []bgp.Route
			if err := e.client().Get(cmd.Context(), control.PathBGPRoutes+"?"+q.Encode(), &rs); err != nil {
				return err
			}
			if has(args, "json") {
				return writeJSON(cmd.OutOrStdout(), rs)
			}
			var sum control.BGPSummary
			if err := e.client().Get(cmd.Context(), control.PathBGPSummary, &sum); err != nil {
				return err
			}
			if arg != "" {
				return printBGPPrefix(cmd.OutOrStdout(), arg, rs)
			}
			return printBGPTable(cmd.OutOrStdout(), sum, rs, false)
		}}, "PREFIX", "A prefix (10.1.0.0/24) or an address", "json")
	c.AddCommand(
		withKeywords(&cobra.Command{Use: "summary", Short: "Neighbours, their sessions and prefixes",
			RunE: func(cmd *cobra.Command, args []string) error {
				var sum control.BGPSummary
				if err := e.client().Get(cmd.Context(), control.PathBGPSummary, &sum); err != nil {
					return err
				}
				if has(args, "json") {
					return writeJSON(cmd.OutOrStdout(), sum)
				}
				return printBGPSummary(cmd.OutOrStdout(), sum, time.Now())
			}}, "json"),
		withOptArg(&cobra.Command{Use: "neighbors", Aliases: []string{"neighbours"}, Short: "Neighbours in detail, or the routes of one",
			RunE: func(cmd *cobra.Command, args []string) error { return showNeighbors(e, cmd, args) }},
			"ADDRESS", "The neighbour's tunnel address", "received-routes", "advertised-routes", "json"),
	)
	return c
}

// parsePrefixArg reads `show ip bgp`'s argument as the daemon takes it: a
// prefix (its paths), or an address (the paths of the longest prefix that
// contains it, as vtysh does).
func parsePrefixArg(s string) (string, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked().String(), nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap().String(), nil
	}
	return "", fmt.Errorf("%q is neither a prefix nor an address", s)
}

func showNeighbors(e *env, cmd *cobra.Command, args []string) error {
	arg := freeArg(cmd, args)
	recv, adv := has(args, "received-routes"), has(args, "advertised-routes")
	if (recv || adv) && arg == "" {
		return fmt.Errorf("received-routes and advertised-routes need a neighbour address")
	}
	if recv && adv {
		return fmt.Errorf("received-routes or advertised-routes, not both")
	}
	var addr netip.Addr
	if arg != "" {
		a, err := netip.ParseAddr(arg)
		if err != nil {
			return fmt.Errorf("%q is not an IP address", arg)
		}
		addr = a.Unmap()
	}
	if recv || adv {
		table := "received"
		if adv {
			table = "advertised"
		}
		var rs []bgp.Route
		q := url.Values{"neighbor": {addr.String()}, "table": {table}}
		if err := e.client().Get(cmd.Context(), control.PathBGPRoutes+"?"+q.Encode(), &rs); err != nil {
			return err
		}
		if has(args, "json") {
			return writeJSON(cmd.OutOrStdout(), rs)
		}
		var sum control.BGPSummary
		if err := e.client().Get(cmd.Context(), control.PathBGPSummary, &sum); err != nil {
			return err
		}
		return printBGPTable(cmd.OutOrStdout(), sum, rs, recv)
	}
	var sum control.BGPSummary
	if err := e.client().Get(cmd.Context(), control.PathBGPSummary, &sum); err != nil {
		return err
	}
	ns := sum.Neighbors
	if addr.IsValid() {
		ns = nil
		for _, n := range sum.Neighbors {
			if n.Address == addr {
				ns = append(ns, n)
			}
		}
		if len(ns) == 0 {
			return fmt.Errorf("%s is not a BGP neighbour", addr)
		}
	}
	if ns == nil {
		ns = []bgp.NeighborStatus{}
	}
	if has(args, "json") {
		return writeJSON(cmd.OutOrStdout(), ns)
	}
	return printBGPNeighbors(cmd.OutOrStdout(), ns, time.Now())
}

func newClearBGP(e *env) *cobra.Command {
	return withArg(&cobra.Command{Use: "bgp ADDRESS|*", Short: "Restart BGP sessions (soft: ask for the routes again)",
		Args: cobra.RangeArgs(1, 3),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := control.BGPClearRequest{}
			if args[0] == "*" {
				req.All = true
			} else {
				a, err := netip.ParseAddr(args[0])
				if err != nil {
					return fmt.Errorf("%q is neither a neighbour address nor *", args[0])
				}
				req.Neighbor = a.Unmap()
			}
			asJSON := false
			for _, w := range args[1:] {
				switch w {
				case "soft":
					req.Soft = true
				case "json":
					asJSON = true
				default:
					return fmt.Errorf("unknown keyword %q after clear ip bgp (expected: soft, json)", w)
				}
			}
			var r control.ClearResponse
			if err := e.client().Post(cmd.Context(), control.PathBGPClear, req, &r); err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), r)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%% %d BGP %s cleared\n", r.Cleared, plural(r.Cleared, "session", "sessions"))
			return nil
		}}, "ADDRESS|*", "A neighbour's tunnel address, or * for all; then soft to ask for the routes again")
}

// stateOrPrefixes is vtysh's State/PfxRcd column.
func stateOrPrefixes(n bgp.NeighborStatus) string {
	switch {
	case n.PrefixLimit:
		return "Idle (PfxCt)"
	case n.State == bgp.StateEstablished:
		return fmt.Sprint(n.Received)
	}
	return stateName(n.State)
}

// stateName is a session state as vtysh writes it ("Established"); an
// empty one (a daemon that sent none) is "Unknown".
func stateName(s string) string {
	if s == "" {
		return "Unknown"
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

func printBGPSummary(w io.Writer, s control.BGPSummary, now time.Time) error {
	if !s.Enabled {
		_, err := fmt.Fprintln(w, "% BGP is not configured on this node")
		return err
	}
	up := 0
	for _, n := range s.Neighbors {
		if n.State == bgp.StateEstablished {
			up++
		}
	}
	fmt.Fprintf(w, "BGP router identifier %s, local AS number %d (%s, %s)\n", s.RouterID, s.AS, s.Role, s.Mode)
	fmt.Fprintf(w, "Neighbors %d, established %d; routes in the kernel %d\n\n", len(s.Neighbors), up, s.KernelRoutes)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "Neighbor\tV\tAS\tUpdRcvd\tUpdSent\tUp/Down\tState/PfxRcd\tPfxAcc\tRefused\tKind")
	for _, n := range s.Neighbors {
		fmt.Fprintf(tw, "%s\t4\t%d\t%d\t%d\t%s\t%s\t%d\t%d\t%s\n", n.Address, n.AS, n.UpdatesIn, n.UpdatesOut,
			upDown(n.Since, now), stateOrPrefixes(n), n.Accepted, n.Refused, n.Kind)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range s.Refused {
		fmt.Fprintf(w, "\n%% %s registered but not a neighbour: %s (%s)", r.Address, r.Reason, r.Identity)
	}
	if len(s.Refused) > 0 {
		fmt.Fprintln(w)
	}
	return nil
}

func asPath(r bgp.Route) string {
	parts := make([]string, 0, len(r.ASPath)+1)
	for _, a := range r.ASPath {
		parts = append(parts, fmt.Sprint(a))
	}
	return strings.TrimSpace(strings.Join(append(parts, r.Origin), " "))
}

// printBGPTable prints routes as vtysh's show ip bgp does; refused adds
// the refusals of a received table.
func printBGPTable(w io.Writer, s control.BGPSummary, rs []bgp.Route, refused bool) error {
	if !s.Enabled {
		_, err := fmt.Fprintln(w, "% BGP is not configured on this node")
		return err
	}
	fmt.Fprintf(w, "BGP local router ID is %s, local AS %d\n", s.RouterID, s.AS)
	fmt.Fprintln(w, "Status codes: * valid, > best, = multipath, S stale, R refused by the filter")
	fmt.Fprintln(w, "Origin codes: i IGP, e EGP, ? incomplete")
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "   \tNetwork\tNext Hop\tMetric\tLocPrf\tPath")
	for _, r := range rs {
		code := "*"
		switch {
		case r.Refused:
			code = "R"
		case r.Stale:
			code = "S"
		}
		switch {
		case r.Best:
			code += ">"
		case r.Multipath:
			code += "="
		}
		nh := r.NextHop.String()
		if r.Local() {
			nh = "0.0.0.0"
		}
		lp := ""
		if r.LocalPref != 0 {
			lp = fmt.Sprint(r.LocalPref)
		}
		line := fmt.Sprintf("%s\t%s\t%s\t%d\t%s\t%s", code, r.Prefix, nh, r.MED, lp, asPath(r))
		if refused && r.Refused {
			line += "\t(" + r.Why + ")"
		}
		fmt.Fprintln(tw, line)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "\nDisplayed %d %s\n", len(rs), plural(len(rs), "route", "routes"))
	return err
}

// printBGPPrefix prints every path of one prefix.
func printBGPPrefix(w io.Writer, prefix string, rs []bgp.Route) error {
	if len(rs) == 0 {
		_, err := fmt.Fprintf(w, "%% Network not in table: %s\n", prefix)
		return err
	}
	fmt.Fprintf(w, "BGP routing table entry for %s\nPaths: (%d available)\n", rs[0].Prefix, len(rs))
	for _, r := range rs {
		from := "Local"
		if !r.Local() {
			from = fmt.Sprintf("%s from %s (AS %d)", r.NextHop, r.Peer, r.PeerAS)
		}
		flags := []string{"valid"}
		if r.Best {
			flags = append(flags, "best")
		}
		if r.Multipath {
			flags = append(flags, "multipath")
		}
		if r.Stale {
			flags = append(flags, "stale")
		}
		path := asPath(r)
		if len(r.ASPath) == 0 {
			path = "Local, origin " + r.Origin
		}
		fmt.Fprintf(w, "  %s\n    %s\n    Origin %s, metric %d", path, from, r.Origin, r.MED)
		if r.LocalPref != 0 {
			fmt.Fprintf(w, ", localpref %d", r.LocalPref)
		}
		fmt.Fprintf(w, ", %s\n", strings.Join(flags, ", "))
		if !r.Age.IsZero() {
			fmt.Fprintf(w, "    Last update: %s\n", r.Age.Format(time.DateTime))
		}
	}
	return nil
}

func printBGPNeighbors(w io.Writer, ns []bgp.NeighborStatus, now time.Time) error {
	for i, n := range ns {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "BGP neighbor is %s, remote AS %d, %s link, %s\n", n.Address, n.AS, map[bool]string{true: "internal", false: "external"}[n.Kind == bgp.KindHub], n.Kind)
		if n.NBMA.IsValid() {
			fmt.Fprintf(w, "  NBMA address %s\n", n.NBMA)
		}
		if n.Identity != "" {
			fmt.Fprintf(w, "  Certificate %s\n", n.Identity)
		}
		if n.Kind == bgp.KindSpoke {
			nets := make([]string, 0, len(n.Networks))
			for _, p := range n.Networks {
				nets = append(nets, p.String())
			}
			fmt.Fprintf(w, "  May announce (from the %s): %s le %d\n", n.Source, strings.Join(nets, ", "), n.MaxLen)
			if len(n.Excluded) > 0 {
				ex := make([]string, 0, len(n.Excluded))
				for _, p := range n.Excluded {
					ex = append(ex, p.String())
				}
				fmt.Fprintf(w, "  Except inside other spokes' more specific networks: %s\n", strings.Join(ex, ", "))
			}
		}
		state := stateName(n.State)
		if n.PrefixLimit {
			state += " (maximum prefixes exceeded: clear ip bgp to restart)"
		}
		fmt.Fprintf(w, "  BGP state = %s, %s %s\n", state, map[bool]string{true: "up for", false: "down since"}[n.State == bgp.StateEstablished], upDown(n.Since, now))
		fmt.Fprintf(w, "  Prefixes: %d received, %d accepted, %d refused now (%d refused in all)\n", n.Received, n.Accepted, n.Refused, n.RefusedTotal)
		fmt.Fprintf(w, "  Updates: %d received, %d sent; %d %s\n", n.UpdatesIn, n.UpdatesOut, n.Flaps, plural(int(n.Flaps), "flap", "flaps"))
		if n.LastError != "" {
			fmt.Fprintf(w, "  Last reset: %s\n", n.LastError)
		}
	}
	if len(ns) == 0 {
		_, err := fmt.Fprintln(w, "% No BGP neighbours")
		return err
	}
	return nil
}
