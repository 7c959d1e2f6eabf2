package ctl

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/firewall"
)

// newShowFirewall is show firewall: the policy in force with every rule's
// counter, and the data plane's own drops beside it.
func newShowFirewall(e *env) *cobra.Command {
	return withKeywords(&cobra.Command{
		Use:   "firewall",
		Short: "The nftables policy with each rule's counter, and the data plane's own drops",
		RunE: func(cmd *cobra.Command, args []string) error {
			var r control.FirewallResponse
			if err := e.client().Get(cmd.Context(), control.PathFirewall, &r); err != nil {
				return err
			}
			if has(args, "json") {
				return writeJSON(cmd.OutOrStdout(), r)
			}
			printFirewall(cmd.OutOrStdout(), r, time.Now())
			return nil
		},
	}, "json")
}

// printFirewall formats show firewall.
func printFirewall(w io.Writer, r control.FirewallResponse, now time.Time) {
	if !r.Enabled || r.Policy == nil {
		fmt.Fprintln(w, "Firewall: off (no firewall section in the configuration)")
		printFirewallDataplane(w, r.Dataplane)
		return
	}
	p := r.Policy
	rules := 0
	for _, c := range p.Chains {
		rules += len(c.Rules)
	}
	if !p.Active {
		fmt.Fprintln(w, "Firewall: not in force (no policy applied)")
	} else {
		fmt.Fprintf(w, "Firewall: table inet %s, %d rules, applied %s ago in %s\n", firewall.TableName, rules,
			upDown(p.AppliedAt, now), roundMS(p.ApplyTook))
	}
	ipsecMode := string(p.IPsec)
	if ipsecMode == "" {
		ipsecMode = "off"
	}
	if p.IPsecTUN != "" {
		ipsecMode += " (charon's TUN " + p.IPsecTUN + ")"
	}
	lan := strings.Join(p.LAN, ", ")
	if lan == "" {
		lan = "every other interface"
	}
	fmt.Fprintf(w, "Tunnel %s (MTU %d), IPsec %s\n", p.Tunnel, p.TunnelMTU, ipsecMode)
	if p.Baseline {
		inet := strings.Join(p.Internet, ", ")
		if inet == "" {
			inet = "none"
		}
		fmt.Fprintf(w, "Baseline (no firewall section): GRE only under IPsec, BGP only on the tunnel, everything else accepted; uplinks %s\n", inet)
	} else {
		fmt.Fprintf(w, "Zones: internet %s; lan %s\n", strings.Join(p.Internet, ", "), lan)
	}
	if !p.ConfirmBy.IsZero() {
		fmt.Fprintf(w, "Pending: rolls back at %s (in %s) unless confirmed (firewall confirm)\n",
			p.ConfirmBy.Local().Format("15:04:05"), clock(p.ConfirmBy.Sub(now)))
	}
	fmt.Fprintf(w, "Applies %d, refused %d, rollbacks %d", p.Stats.Applies, p.Stats.Failures, p.Stats.Rollbacks)
	if p.Stats.Rollbacks > 0 {
		fmt.Fprintf(w, " (the last %s after its deadline)", roundMS(p.Stats.RollbackLate))
	}
	fmt.Fprintln(w)
	if p.Stats.LastError != "" {
		fmt.Fprintf(w, "Last refusal: %s\n", p.Stats.LastError)
	}
	if p.CountersError != "" {
		fmt.Fprintf(w, "%% counters unavailable: %s\n", p.CountersError)
	}
	for _, c := range p.Chains {
		fmt.Fprintf(w, "\nchain %s (%s hook %s, priority %d, policy %s)\n", c.Name, c.Type, c.Hook, c.Priority, c.Policy)
		width := 4
		for _, r := range c.Rules {
			width = max(width, len(r.Name))
		}
		fmt.Fprintf(w, "%12s %14s  %-*s  %s\n", "Packets", "Bytes", width, "Name", "Rule")
		for _, r := range c.Rules {
			fmt.Fprintf(w, "%12d %14d  %-*s  %s\n", r.Packets, r.Bytes, width, r.Name, r.Rule)
		}
	}
	printFirewallDataplane(w, r.Dataplane)
}

// printFirewallDataplane shows the data plane's own drops: with a fast
// path, outer GRE never reaches the policy and this is where GRE in clear
// is dropped.
func printFirewallDataplane(w io.Writer, d *control.FirewallDataplane) {
	if d == nil {
		return
	}
	fmt.Fprintf(w, "\nData plane %s", d.Backend)
	if d.FastPath {
		fmt.Fprint(w, ": its fast path forwards outer GRE past netfilter and drops GRE in clear itself")
	}
	fmt.Fprintf(w, "\n  GRE refused (not under IPsec): %d\n", d.IngressRefused)
	if len(d.Counters) > 0 {
		fmt.Fprintf(w, "  fast path: %s\n", kv(d.Counters))
	}
	var other []string
	for _, k := range sortedKeys(d.Drops) {
		if k != "ingress" && d.Drops[k] > 0 {
			other = append(other, fmt.Sprintf("%s %d", k, d.Drops[k]))
		}
	}
	if len(other) > 0 {
		fmt.Fprintf(w, "  other drops: %s\n", strings.Join(other, ", "))
	}
}

func kv(m map[string]uint64) string {
	var out []string
	for _, k := range sortedKeys(m) {
		out = append(out, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(out, ", ")
}

func sortedKeys(m map[string]uint64) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func roundMS(d time.Duration) string {
	return (d.Round(100 * time.Microsecond)).String()
}

// newFirewall is the firewall command: apply, confirm and translate the
// configuration file's firewall section (awall's activate and translate).
func newFirewall(e *env) *cobra.Command {
	var confirm time.Duration
	apply := &cobra.Command{
		Use:   "apply",
		Short: "Put the configuration file's firewall section in force (--confirm: roll back unless confirmed in time)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var r control.FirewallApplyResponse
			if err := e.client().Post(cmd.Context(), control.PathFirewallApply, control.FirewallApplyRequest{Confirm: confirm}, &r); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "%% firewall applied: %d rules in %s\n", r.Rules, roundMS(r.Took))
			if !r.ConfirmBy.IsZero() {
				fmt.Fprintf(w, "%% confirm with 'firewall confirm' by %s, or the previous policy comes back\n", r.ConfirmBy.Local().Format("15:04:05"))
			}
			for _, i := range r.Ignored {
				fmt.Fprintf(w, "%% not applied (reload does): %s\n", i)
			}
			return nil
		},
	}
	apply.Flags().DurationVar(&confirm, "confirm", 0, "roll back unless confirmed within this time (30s)")
	return group("firewall", "The nftables policy: apply, confirm, translate",
		apply,
		&cobra.Command{
			Use:   "confirm",
			Short: "Keep the policy a firewall apply --confirm put in force",
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				if err := e.client().Post(cmd.Context(), control.PathFirewallConfirm, struct{}{}, &struct{}{}); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), "% firewall confirmed")
				return nil
			},
		},
		withKeywords(&cobra.Command{
			Use:   "translate",
			Short: "The configuration file's firewall section as nft will list it (running: the policy in force)",
			RunE: func(cmd *cobra.Command, args []string) error {
				path := control.PathFirewallTranslate
				if has(args, "running") {
					path += "?running=true"
				}
				var r control.FirewallTranslateResponse
				if err := e.client().Get(cmd.Context(), path, &r); err != nil {
					return err
				}
				_, err := io.WriteString(cmd.OutOrStdout(), r.Text)
				return err
			},
		}, "running"),
	)
}
