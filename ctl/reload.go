package ctl

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/opendmvpn/dmvpn/daemon/control"
)

// ReloadView is what reload prints, and its JSON form.
type ReloadView = control.ReloadResponse

// newReload is `reload [--dry-run] [json]`: dmvpnd reads its file again
// and applies it, all or nothing (as SIGHUP does); --dry-run applies
// nothing and says what would change. A refusal is an error (exit status
// 1) with its reasons, one per line.
func newReload(e *env) *cobra.Command {
	var dry bool
	c := withKeywords(&cobra.Command{
		Use:   "reload",
		Short: "Read the configuration file again and apply it, all or nothing (--dry-run: only say what would change)",
		RunE: func(cmd *cobra.Command, args []string) error {
			var r control.ReloadResponse
			if err := e.client().Post(cmd.Context(), control.PathReload, control.ReloadRequest{DryRun: dry}, &r); err != nil {
				return err
			}
			if has(args, "json") {
				return writeJSON(cmd.OutOrStdout(), r)
			}
			w := cmd.OutOrStdout()
			switch {
			case dry && len(r.Changes) == 0:
				fmt.Fprintln(w, "Dry run: nothing would change")
			case dry:
				fmt.Fprintf(w, "Dry run: the reload would apply %d %s:\n", len(r.Changes), plural(len(r.Changes), "change", "changes"))
			case len(r.Changes) == 0:
				fmt.Fprintln(w, "Reloaded: nothing changed")
			default:
				fmt.Fprintf(w, "Reloaded: %d %s applied:\n", len(r.Changes), plural(len(r.Changes), "change", "changes"))
			}
			for _, ch := range r.Changes {
				fmt.Fprintf(w, "  %s\n", ch)
			}
			return nil
		},
	}, "json")
	c.Flags().BoolVar(&dry, "dry-run", false, "apply nothing: say what would change, or why the reload would be refused")
	return c
}
