package kernel

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"github.com/vishvananda/netlink"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/gre/internal/nlops"
)

// neighApplier programs neighbour entries in batches
// (*nlops.NeighWriter).
type neighApplier interface {
	Apply(ops []nlops.NeighOp) []error
	Close() error
}

var _ gre.NeighborBatcher = (*Device)(nil)

// ApplyNeighbors implements gre.NeighborBatcher: the entries go to the
// kernel in batches on one netlink socket. Every failure is counted by
// reason (Counters.NeighborFailures): "table_full" when the kernel's
// neighbour table is at gc_thresh3 and nothing can be collected
// (ENOBUFS), "no_answer" when the kernel's answer was lost, "error"
// otherwise.
func (d *Device) ApplyNeighbors(ctx context.Context, ops []gre.NeighborOp) []error {
	errs := make([]error, len(ops))
	if err := d.check(ctx); err != nil {
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	nops := make([]nlops.NeighOp, 0, len(ops))
	idx := make([]int, 0, len(ops))
	for i, op := range ops {
		var nn *netlink.Neigh
		if op.Delete {
			fam := netlink.FAMILY_V4
			if !op.Proto.Is4() {
				fam = netlink.FAMILY_V6
			}
			nn = &netlink.Neigh{LinkIndex: d.index, Family: fam, IP: nlops.IP(op.Proto)}
		} else {
			var err error
			if nn, err = nlops.NeighToNetlink(op.Neighbor, d.index); err != nil {
				errs[i] = fmt.Errorf("kernel: %w", err)
				continue
			}
		}
		nops = append(nops, nlops.NeighOp{Neigh: nn, Del: op.Delete})
		idx = append(idx, i)
	}
	var res []error
	if d.nw != nil {
		res = d.nw.Apply(nops)
	} else {
		res = make([]error, len(nops))
		for j, op := range nops {
			if op.Del {
				res[j] = nlops.IgnoreNotFound(d.env.nl.NeighDel(op.Neigh))
			} else {
				res[j] = d.env.nl.NeighSet(op.Neigh)
			}
		}
	}
	for j, err := range res {
		if err == nil {
			continue
		}
		i := idx[j]
		verb := "set"
		if ops[i].Delete {
			verb = "delete"
		}
		d.stats.NeighborFailure(neighFailure(err))
		errs[i] = fmt.Errorf("kernel: %s neighbour %s: %w", verb, ops[i].Proto, err)
	}
	return errs
}

// neighFailure names the reason a neighbour request failed.
func neighFailure(err error) string {
	switch {
	case errors.Is(err, syscall.ENOBUFS):
		return gre.NeighborTableFull
	case errors.Is(err, nlops.ErrNoAnswer):
		return "no_answer"
	}
	return "error"
}
