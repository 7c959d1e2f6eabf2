package ipsec

import (
	"fmt"
	"net/netip"

	"github.com/opendmvpn/dmvpn/host"
)

// Rule priorities of userspace mode, around charon's own
// `220: not fwmark 0x42 lookup 220` (its ipsec TUN's routes). Traffic that
// is not GRE jumps over 220 and 221 and goes on with the rules after them
// (the shortcut table's, main): a peer's NBMA address stays reachable for
// ping and IKE, and inner traffic still finds its shortcut routes.
const (
	rulePrioNotGRE    = 219 // not GRE: goto rulePrioAfter
	rulePrioNoClear   = 221 // GRE with no SA route in table 220 is refused, never sent in clear
	rulePrioAfter     = 222 // nop: the target of the jump
	policyPrioNoClear = 0x7fffffff
)

const protoGRE = 47

// ProtectionOwner is what IPsec owns in the host state (package host):
// the rules of userspace mode and the catch-all policies of kernel mode.
// Whatever sits at these priorities is IPsec's: a start adopts it, a
// change of mode replaces one layer by the other with both in force in
// between.
var ProtectionOwner = host.Owner{
	Name:           "ipsec",
	RulePriorities: []int{rulePrioNotGRE, rulePrioNoClear, rulePrioAfter},
	XfrmPriorities: []uint32{policyPrioNoClear},
}

// Protection returns the host state that keeps GRE from leaving or
// entering in clear when no SA covers it, as a second layer under
// charon's SAs. Userspace mode: GRE without a route in charon's table is
// prohibited, and other traffic to peers skips that table (the jump's
// target listed first). Kernel mode: catch-all xfrm policies that block
// GRE both ways at the lowest precedence, so only GRE that an SA's own
// policy covers passes.
func Protection(mode Mode) (*host.Config, error) {
	switch mode {
	case ModeUserspace:
		return &host.Config{Rules: []host.Rule{
			{Family: host.IPv4, Priority: rulePrioAfter, Action: host.Nop},
			{Family: host.IPv4, Priority: rulePrioNotGRE, Action: host.Goto, Goto: rulePrioAfter, Invert: true, IPProto: protoGRE},
			{Family: host.IPv4, Priority: rulePrioNoClear, Action: host.Prohibit, IPProto: protoGRE},
		}}, nil
	case ModeKernel:
		any4 := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		cfg := &host.Config{}
		for _, dir := range []host.XfrmDir{host.XfrmOut, host.XfrmIn} {
			cfg.Xfrm = append(cfg.Xfrm, host.XfrmPolicy{Dir: dir, Src: any4, Dst: any4, Proto: protoGRE,
				Priority: policyPrioNoClear, Action: host.XfrmBlock})
		}
		return cfg, nil
	}
	return nil, fmt.Errorf("%w: mode %q", ErrConfig, mode)
}
