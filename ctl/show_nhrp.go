package ctl

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/nhrp"
	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

func newShowNHRP(e *env) *cobra.Command {
	cache := func(path string) func(cmd *cobra.Command, args []string) error {
		return func(cmd *cobra.Command, args []string) error {
			// Streamed: the daemon's JSON copied as it comes, or each
			// entry printed as it is decoded (never the whole cache).
			if has(args, "json") {
				return e.client().Copy(cmd.Context(), path, cmd.OutOrStdout())
			}
			w, n := cmd.OutOrStdout(), 0
			var now time.Time // when the answer came
			iface, err := e.client().CacheEach(cmd.Context(), path, func(iface string, en nhrp.CacheEntry) error {
				if n == 0 {
					now = time.Now()
				}
				n++
				printCacheEntry(w, iface, en, has(args, "detail"), now)
				return nil
			})
			if err == nil && n == 0 {
				fmt.Fprintf(w, "%s: no entries\n", iface)
			}
			return err
		}
	}
	c := withKeywords(&cobra.Command{
		Use:   "nhrp",
		Short: "NHRP information",
		RunE:  cache(control.PathCache),
	}, "detail", "json")
	c.AddCommand(
		withKeywords(&cobra.Command{Use: "cache", Short: "NHRP cache entries", RunE: cache(control.PathCache)}, "detail", "json"),
		withKeywords(&cobra.Command{Use: "nhs", Short: "Next hop servers", RunE: func(cmd *cobra.Command, args []string) error {
			var r control.NHSResponse
			if err := e.client().Get(cmd.Context(), control.PathNHS, &r); err != nil {
				return err
			}
			if has(args, "json") {
				return writeJSON(cmd.OutOrStdout(), r)
			}
			printNHS(cmd.OutOrStdout(), r, has(args, "detail"), time.Now())
			return nil
		}}, "detail", "json"),
		withKeywords(&cobra.Command{Use: "shortcut", Short: "Shortcut routes", RunE: cache(control.PathShortcuts)}, "detail", "json"),
		withKeywords(&cobra.Command{Use: "traffic", Short: "NHRP packet counters", RunE: func(cmd *cobra.Command, args []string) error {
			var r control.TrafficResponse
			if err := e.client().Get(cmd.Context(), control.PathTraffic, &r); err != nil {
				return err
			}
			if has(args, "json") {
				return writeJSON(cmd.OutOrStdout(), r)
			}
			printTraffic(cmd.OutOrStdout(), r)
			return nil
		}}, "json"),
	)
	return c
}

// printCacheEntry prints one entry as Cisco's show ip nhrp does.
func printCacheEntry(w io.Writer, iface string, e nhrp.CacheEntry, detail bool, now time.Time) {
	via := peerAddr(e)
	fmt.Fprintf(w, "%s via %s, %s created %s, %s\n", e.Proto, via, iface, clock(now.Sub(e.Created)), expiry(e.Expires, now))
	flags := strings.Join(e.Flags, " ")
	if flags == "" {
		flags = "none"
	}
	fmt.Fprintf(w, "  Type: %s, Flags: %s\n", e.Type, flags)
	switch {
	case e.NBMA.IsValid():
		fmt.Fprintf(w, "  NBMA address: %s\n", e.NBMA)
		if e.ClaimedNBMA.IsValid() {
			fmt.Fprintf(w, "    (Claimed NBMA address: %s)\n", e.ClaimedNBMA)
		}
	case e.Type == nhrp.TypeLocal:
		fmt.Fprintf(w, "  NBMA address: (this node)\n")
	}
	if detail {
		if e.HoldingTime > 0 || e.MTU > 0 {
			fmt.Fprintf(w, "  Holding time: %ds, MTU: %d\n", e.HoldingTime, e.MTU)
		}
		if e.PeerState != "" {
			fmt.Fprintf(w, "  Peer state: %s\n", e.PeerState)
		}
		if e.Identity != "" {
			fmt.Fprintf(w, "  Identity: %s\n", e.Identity)
		}
		keys := make([]string, 0, len(e.Attrs))
		for k := range e.Attrs {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			fmt.Fprintf(w, "  %s: %s\n", k, strings.Join(e.Attrs[k], ", "))
		}
		fmt.Fprintf(w, "  Created: %s\n", e.Created.Local().Format(time.DateTime))
	}
}

// printNHS prints the servers as Cisco's show ip nhrp nhs [detail] does.
func printNHS(w io.Writer, r control.NHSResponse, detail bool, now time.Time) {
	fmt.Fprintf(w, "Legend: E=Expecting replies, R=Responding, W=Waiting, D=Dynamic\n%s:\n", r.Interface)
	for _, n := range r.Servers {
		fmt.Fprintf(w, "%-15s %-3s NBMA Address: %s priority = %d cluster = 0", nhsName(n), nhsFlags(n), n.NBMA, n.Priority)
		if detail {
			ago := "never"
			if !n.LastReply.IsZero() {
				ago = clock(now.Sub(n.LastReply)) + " ago"
			}
			fmt.Fprintf(w, "  req-sent %d  req-failed %d  repl-recv %d (%s)\n", n.Sent, n.Failed, n.Replies, ago)
			fmt.Fprintf(w, " Current Request ID: %d\n", n.RequestID)
			fmt.Fprintf(w, " State: %s since %s", n.State, n.Since.Local().Format(time.DateTime))
			if !n.Expires.IsZero() {
				fmt.Fprintf(w, ", registration %s", expiry(n.Expires, now))
			}
			if n.Hostname != "" {
				fmt.Fprintf(w, ", from DNS name %s", n.Hostname)
			}
			if n.PublicNBMA.IsValid() {
				fmt.Fprintf(w, ", our NBMA seen as %s", n.PublicNBMA)
			}
			if n.LastError != "" {
				fmt.Fprintf(w, "\n Last error: %s", n.LastError)
			}
		}
		fmt.Fprintln(w)
	}
	if len(r.Servers) == 0 {
		fmt.Fprintln(w, "(no next hop servers configured)")
	}
}

// printTraffic prints the counters as Cisco's show ip nhrp traffic does,
// followed by errors by code, drops, rate-limit use and the data plane.
func printTraffic(w io.Writer, r control.TrafficResponse) {
	t := r.NHRP
	fmt.Fprintf(w, "%s: Max-send limit:%dPkts/1Sec, Usage:%d%%\n", r.Interface, t.MaxSend, t.Usage)
	for _, dir := range []struct {
		name string
		m    map[string]uint64
	}{{"Sent", t.Sent}, {"Rcvd", t.Received}} {
		var total uint64
		for _, n := range dir.m {
			total += n
		}
		fmt.Fprintf(w, "   %s: Total %d\n", dir.name, total)
		for i := wire.TypeResolutionRequest; i <= wire.TypeTrafficIndication; i += 3 {
			var parts []string
			for ty := i; ty < i+3 && ty <= wire.TypeTrafficIndication; ty++ {
				parts = append(parts, fmt.Sprintf("%d %s", dir.m[ty.String()], ty))
			}
			fmt.Fprintf(w, "         %s\n", strings.Join(parts, "  "))
		}
	}
	fmt.Fprintf(w, "   Error Indications sent: %s\n", counts(t.ErrorsSent))
	fmt.Fprintf(w, "   Error Indications received: %s\n", counts(t.ErrorsReceived))
	fmt.Fprintf(w, "   Dropped on receipt: %s\n", counts(t.Dropped))
	fmt.Fprintf(w, "   Held back by rate limits: %s\n", counts(t.Suppressed))
	fmt.Fprintf(w, "   Refused (sender's identity does not prove it): %s\n", counts(t.Refused))
	fmt.Fprintf(w, "   Refused or evicted by limits: %s\n", counts(t.Limited))
	if d := r.Dataplane; d != nil {
		fmt.Fprintf(w, "   Data plane: sent %d packets (%d bytes), received %d packets (%d bytes), NHRP %d out %d in\n",
			d.TxPackets, d.TxBytes, d.RxPackets, d.RxBytes, d.NHRPTx, d.NHRPRx)
		fmt.Fprintf(w, "   Neighbour misses: %d (%d suppressed); data-plane drops: %s\n", d.Misses, d.MissesSuppressed, counts(d.Drops))
		if d.FastPath != nil {
			fmt.Fprintf(w, "   Fast path (eBPF): sent %d, received %d; %s\n", d.FastTxPackets, d.FastRxPackets, counts(d.FastPath))
		}
	}
}

// counts prints the non-zero counters of a map, sorted by name.
func counts(m map[string]uint64) string {
	var parts []string
	for k, n := range m {
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, k))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	slices.SortFunc(parts, func(a, b string) int {
		return strings.Compare(a[strings.IndexByte(a, ' '):], b[strings.IndexByte(b, ' '):])
	})
	return strings.Join(parts, ", ")
}
