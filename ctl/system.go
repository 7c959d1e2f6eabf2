package ctl

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/internal/version"
	"github.com/opendmvpn/dmvpn/nhrp"
)

func newShowRunningConfig(e *env) *cobra.Command {
	return withKeywords(&cobra.Command{
		Use:   "running-config",
		Short: "Current operating configuration",
		RunE: func(cmd *cobra.Command, args []string) error {
			var r control.RunningConfigResponse
			if err := e.client().Get(cmd.Context(), control.PathRunningConfig, &r); err != nil {
				return err
			}
			if has(args, "json") {
				return writeJSON(cmd.OutOrStdout(), r)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "# running configuration (read from %s, defaults included)\n%s", r.File, r.YAML)
			return nil
		},
	}, "json")
}

// VersionView is what show version prints.
type VersionView struct {
	Client  version.Info            `json:"dmvpnctl"`
	Daemon  control.VersionResponse `json:"dmvpnd"`
	Status  control.Info            `json:"node"`
	Socket  string                  `json:"socket"`
	Running string                  `json:"uptime"`
}

func newShowVersion(e *env) *cobra.Command {
	return withKeywords(&cobra.Command{
		Use:   "version",
		Short: "dmvpnctl and dmvpnd versions",
		RunE: func(cmd *cobra.Command, args []string) error {
			c := e.client()
			v := VersionView{Client: version.Get(), Socket: c.Socket()}
			if err := c.Get(cmd.Context(), control.PathVersion, &v.Daemon); err != nil {
				return err
			}
			var st control.Status
			if err := c.Get(cmd.Context(), control.PathStatus, &st); err != nil {
				return err
			}
			v.Status = st.Info
			v.Running = upDown(v.Daemon.Started, time.Now())
			if has(args, "json") {
				return writeJSON(cmd.OutOrStdout(), v)
			}
			w := cmd.OutOrStdout()
			d := v.Daemon.Daemon
			fmt.Fprintf(w, "dmvpnd %s (%s %s/%s)", d.Version, d.Go, d.OS, d.Arch)
			if d.Commit != "" {
				fmt.Fprintf(w, ", commit %s", d.Commit)
			}
			fmt.Fprintf(w, "\ndmvpnctl %s (%s)\n", v.Client.Version, v.Client.Go)
			fmt.Fprintf(w, "Node %s (%s), up %s, configuration %s\n", st.Node, st.Role, v.Running, st.ConfigFile)
			fmt.Fprintf(w, "Tunnel %s %s, %s\n", st.NHRP.Interface, st.NHRP.Address, st.DataplaneReason)
			fmt.Fprintf(w, "Control socket %s\n", v.Socket)
			return nil
		},
	}, "json")
}

func newClearNHRP(e *env) *cobra.Command {
	clear := func(req control.ClearRequest) func(cmd *cobra.Command, args []string) error {
		return func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				a, err := netip.ParseAddr(args[0])
				if err != nil {
					return fmt.Errorf("%q is not an IP address", args[0])
				}
				req.Peer = a
			}
			var r control.ClearResponse
			if err := e.client().Post(cmd.Context(), control.PathClear, req, &r); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%% %d entries cleared\n", r.Cleared)
			return nil
		}
	}
	c := &cobra.Command{
		Use:   "nhrp",
		Short: "Clear dynamic NHRP entries (never static ones)",
		Args:  cobra.NoArgs,
		RunE:  clear(control.ClearRequest{Dynamic: true}),
	}
	c.AddCommand(
		&cobra.Command{Use: "dynamic", Short: "Registrations and learned bindings, with their shortcuts", Args: cobra.NoArgs,
			RunE: clear(control.ClearRequest{Dynamic: true})},
		&cobra.Command{Use: "shortcut", Short: "Shortcut routes", Args: cobra.NoArgs,
			RunE: clear(control.ClearRequest{Shortcut: true})},
		withArg(&cobra.Command{Use: "peer ADDRESS", Short: "Every entry of one peer", Args: cobra.ExactArgs(1),
			RunE: clear(control.ClearRequest{})}, "ADDRESS", "The peer's tunnel or NBMA address"),
	)
	return c
}

func newDebugNHRP(e *env) *cobra.Command {
	return withKeywords(&cobra.Command{
		Use:   "nhrp",
		Short: "Stream NHRP events live until interrupted (Ctrl-C)",
		RunE: func(cmd *cobra.Command, args []string) error {
			w := cmd.OutOrStdout()
			js := has(args, "json")
			if !js {
				what := "events"
				if has(args, "packets") {
					what = "events and packets"
				}
				fmt.Fprintf(w, "NHRP debugging is on (%s); Ctrl-C to stop\n", what)
			}
			err := e.client().Events(cmd.Context(), has(args, "packets"), func(ev nhrp.Event) error {
				if js {
					return writeJSONLine(w, ev)
				}
				_, err := fmt.Fprintln(w, eventLine(ev))
				return err
			})
			if cmd.Context().Err() == context.Canceled {
				return nil
			}
			return err
		},
	}, "packets", "json")
}

// eventLine formats an event in one line.
func eventLine(ev nhrp.Event) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s NHRP: %s", ev.Time.Local().Format("15:04:05.000"), ev.Kind)
	if ev.Packet != nil {
		fmt.Fprintf(&b, " %s %s %s", ev.Packet.Dir, ev.Packet.Peer, ev.Packet.Summary)
		if ev.Packet.Error != "" {
			fmt.Fprintf(&b, " (dropped: %s)", ev.Packet.Error)
		}
		return b.String()
	}
	if ev.Proto.IsValid() {
		fmt.Fprintf(&b, " %s", ev.Proto)
	}
	if ev.NextHop.IsValid() {
		fmt.Fprintf(&b, " via %s", ev.NextHop)
	}
	if ev.NBMA.IsValid() {
		fmt.Fprintf(&b, " nbma %s", ev.NBMA)
	}
	if ev.ClaimedNBMA.IsValid() {
		fmt.Fprintf(&b, " (claimed %s)", ev.ClaimedNBMA)
	}
	if ev.HoldingTime > 0 {
		fmt.Fprintf(&b, " holding %s", ev.HoldingTime)
	}
	if ev.Reason != "" {
		fmt.Fprintf(&b, ": %s", ev.Reason)
	}
	return b.String()
}
