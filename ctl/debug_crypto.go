package ctl

import (
	"context"
	"fmt"
	"io"
	"net/netip"

	"github.com/spf13/cobra"

	"github.com/opendmvpn/dmvpn/ipsec"
)

// newDebugCrypto is `debug crypto [json]` and `debug crypto peer ADDRESS
// [json]`: charon's IKE log streamed over VICI until Ctrl-C, all of it or
// the lines about one peer (its NBMA address), as debug nhrp streams the
// engine's events.
func newDebugCrypto(e *env) *cobra.Command {
	run := func(cmd *cobra.Command, peer netip.Addr, js bool) error {
		w := cmd.OutOrStdout()
		if !js {
			what := "every peer"
			if peer.IsValid() {
				what = "peer " + peer.String()
			}
			fmt.Fprintf(w, "IKE debugging is on (charon's log, %s); Ctrl-C to stop\n", what)
		}
		err := e.client().CryptoLog(cmd.Context(), peer, func(l ipsec.LogLine) error { return printLogLine(w, l, js) })
		if cmd.Context().Err() == context.Canceled {
			return nil
		}
		return err
	}
	c := withKeywords(&cobra.Command{
		Use:   "crypto",
		Short: "Stream charon's IKE log live until interrupted (Ctrl-C)",
		RunE:  func(cmd *cobra.Command, args []string) error { return run(cmd, netip.Addr{}, has(args, "json")) },
	}, "json")
	c.AddCommand(withArg(&cobra.Command{
		Use:   "peer ADDRESS [json]",
		Short: "Only the lines about one peer",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			peer, err := netip.ParseAddr(args[0])
			if err != nil {
				return fmt.Errorf("%q is not an IP address", args[0])
			}
			js := len(args) == 2
			if js && args[1] != "json" {
				return fmt.Errorf("unknown keyword %q after %q (expected: json)", args[1], pathOf(cmd))
			}
			return run(cmd, peer.Unmap(), js)
		},
	}, "ADDRESS", "The peer's NBMA address"))
	return c
}

// printLogLine prints one line of charon's log: as charon writes it,
// after the time, or as a JSON object.
func printLogLine(w io.Writer, l ipsec.LogLine, js bool) error {
	if js {
		return writeJSONLine(w, l)
	}
	_, err := fmt.Fprintf(w, "%s %s\n", l.Time.Local().Format("15:04:05.000"), l)
	return err
}
