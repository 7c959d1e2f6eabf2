package ctl

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/opendmvpn/dmvpn/daemon/control"
)

func newShowUplinks(e *env) *cobra.Command {
	return withKeywords(&cobra.Command{Use: "uplinks", Short: "ISP uplinks: state, since, probe hosts (loss, round trip), weight, NBMA address",
		RunE: func(cmd *cobra.Command, args []string) error {
			var r control.UplinksResponse
			if err := e.client().Get(cmd.Context(), control.PathUplinks, &r); err != nil {
				return err
			}
			if has(args, "json") {
				return writeJSON(cmd.OutOrStdout(), r)
			}
			printUplinks(cmd.OutOrStdout(), r, time.Now())
			return nil
		}}, "json")
}

// printUplinks prints show uplinks: the node's NBMA address and the
// default route, one line per uplink, then each uplink's probe hosts.
func printUplinks(w io.Writer, r control.UplinksResponse, now time.Time) {
	if !r.Enabled {
		fmt.Fprintln(w, "% no uplinks configured (the uplinks section): the kernel's routes are left as they are")
		return
	}
	var def []string
	active := "-"
	for _, u := range r.Uplinks {
		if u.Default {
			def = append(def, u.Name)
		}
		if u.Active {
			active = u.Name
		}
	}
	nbma := "-"
	if len(r.NBMA) > 0 {
		nbma = r.NBMA[0].String()
	}
	via := strings.Join(def, " + ")
	if via == "" {
		via = "-"
	}
	fmt.Fprintf(w, "NBMA address %s (uplink %s), default route via %s\n\n", nbma, active, via)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "Uplink\tInterface\tState\tSince\tDefault\tWeight\tPref\tAddress\tGateway\tTable\tChanges\tReason")
	for _, u := range r.Uplinks {
		d := ""
		switch {
		case u.Active:
			d = "active"
		case u.Default:
			d = "yes"
		}
		link := ""
		if !u.Link {
			link = " (no link)"
		}
		fmt.Fprintf(tw, "%s\t%s%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%d\t%d\t%s\n", u.Name, u.Interface, link, u.State, upDown(u.Since, now), orNone(d),
			u.Weight, u.Preference, orDash(u.Address), orDash(u.Gateway), u.Table, u.Transitions, u.Reason)
	}
	tw.Flush()
	for _, u := range r.Uplinks {
		fmt.Fprintf(w, "\n%s probes every %v (timeout %v), %d rounds:\n", u.Name, u.Interval, u.Timeout, u.Rounds)
		if u.ProbeError != "" {
			fmt.Fprintf(w, "  %% not probed: %s\n", u.ProbeError)
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  Host\tLast\tSent\tReplies\tLoss\tRTT\tSRTT")
		for _, h := range u.Hosts {
			last := "silent"
			if h.Up {
				last = "answered"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%d\t%d\t%.1f%%\t%s\t%s\n", h.Address, last, h.Sent, h.Received, h.Loss, ms(h.RTT), ms(h.SRTT))
		}
		tw.Flush()
	}
}

// ms prints a round trip in milliseconds, "-" when none was measured.
func ms(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
}
