//go:build linux

package ipsec

import (
	"errors"
	"fmt"
	"net"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
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

// Protect installs what keeps GRE from leaving or entering in clear when
// no SA covers it, as a second layer under charon's SAs. Userspace mode:
// GRE without a route in charon's table is prohibited, and other traffic
// to peers skips that table. Kernel mode: catch-all xfrm policies that
// block GRE in both directions at the lowest precedence, so only GRE
// that an SA's own policy covers passes. It returns the undo.
func Protect(mode Mode) (func() error, error) {
	switch mode {
	case ModeUserspace:
		return protectUserspace()
	case ModeKernel:
		return protectKernel()
	}
	return nil, fmt.Errorf("%w: mode %q", ErrConfig, mode)
}

func protectUserspace() (func() error, error) {
	after := netlink.NewRule()
	after.Priority, after.Type = rulePrioAfter, unix.FR_ACT_NOP
	notGRE := netlink.NewRule()
	notGRE.Priority, notGRE.IPProto, notGRE.Invert, notGRE.Goto = rulePrioNotGRE, protoGRE, true, rulePrioAfter
	noClear := netlink.NewRule()
	noClear.Priority, noClear.IPProto, noClear.Type = rulePrioNoClear, protoGRE, unix.RTN_PROHIBIT
	// The jump's target first: a goto to a missing rule is skipped.
	rules := []*netlink.Rule{after, notGRE, noClear}
	for _, r := range rules {
		netlink.RuleDel(r) // a leftover of a crash
		if err := netlink.RuleAdd(r); err != nil {
			return nil, fmt.Errorf("ipsec: rule %d: %w", r.Priority, err)
		}
	}
	return func() error {
		var errs []error
		for _, r := range rules {
			if err := netlink.RuleDel(r); err != nil && !errors.Is(err, syscall.ENOENT) {
				errs = append(errs, fmt.Errorf("ipsec: removing rule %d: %w", r.Priority, err))
			}
		}
		return errors.Join(errs...)
	}, nil
}

func protectKernel() (func() error, error) {
	any4 := &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}
	var pols []*netlink.XfrmPolicy
	for _, dir := range []netlink.Dir{netlink.XFRM_DIR_OUT, netlink.XFRM_DIR_IN} {
		pols = append(pols, &netlink.XfrmPolicy{Src: any4, Dst: any4, Proto: netlink.Proto(protoGRE),
			Dir: dir, Priority: policyPrioNoClear, Action: netlink.XFRM_POLICY_BLOCK})
	}
	for _, p := range pols {
		netlink.XfrmPolicyDel(p)
		if err := netlink.XfrmPolicyAdd(p); err != nil {
			return nil, fmt.Errorf("ipsec: blocking clear GRE (%v): %w", p.Dir, err)
		}
	}
	return func() error {
		var errs []error
		for _, p := range pols {
			if err := netlink.XfrmPolicyDel(p); err != nil && !errors.Is(err, syscall.ENOENT) {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	}, nil
}

// IngressFilter returns the data plane's ingress check for userspace
// mode: GRE counts only if it came out of charon's ipsec TUN (whatever its
// number: after a crash it may be ipsec1), because kernel-libipsec does no
// inbound policy check of its own.
func IngressFilter() func(ifindex int) bool {
	return func(ifindex int) bool {
		l, err := net.InterfaceByIndex(ifindex)
		return err == nil && len(l.Name) >= 5 && l.Name[:5] == "ipsec"
	}
}
