package testbed

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// cutTable names the nftables table that cuts one link.
func cutTable(dev string) string {
	return "testbed_cut_" + strings.NewReplacer("-", "_", ".", "_").Replace(dev)
}

// Cut makes the internet router in namespace ns stop carrying the traffic
// of its link dev (toward a site), in the given mode. Restore undoes it.
func Cut(ctx context.Context, ns, dev string, mode CutMode) error {
	switch mode {
	case CutDrop:
		rules := fmt.Sprintf(`table inet %s {
	chain pre { type filter hook prerouting priority -300; policy accept; iifname "%s" drop; }
	chain post { type filter hook postrouting priority 300; policy accept; oifname "%s" drop; }
}
`, cutTable(dev), dev, dev)
		cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "nft", "-f", "-")
		cmd.Stdin = strings.NewReader(rules)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("testbed: cutting %s in %s: %w: %s", dev, ns, err, out)
		}
	case CutLink:
		if out, err := exec.CommandContext(ctx, "ip", "-n", ns, "link", "set", dev, "down").CombinedOutput(); err != nil {
			return fmt.Errorf("testbed: cutting %s in %s: %w: %s", dev, ns, err, out)
		}
	default:
		return fmt.Errorf("testbed: unknown cut mode %q (drop or link)", mode)
	}
	return nil
}

// Restore undoes Cut of either mode on the router's link dev.
func Restore(ctx context.Context, ns, dev string) error {
	if out, err := exec.CommandContext(ctx, "ip", "-n", ns, "link", "set", dev, "up").CombinedOutput(); err != nil {
		return fmt.Errorf("testbed: restoring %s in %s: %w: %s", dev, ns, err, out)
	}
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "nft", "delete", "table", "inet", cutTable(dev)).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "No such file") {
		return fmt.Errorf("testbed: restoring %s in %s: %w: %s", dev, ns, err, out)
	}
	return nil
}
