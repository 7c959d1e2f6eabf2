package ebpf

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// tcxAttacher attaches with TCX links, owned by this process only.
type tcxAttacher struct{}

type tcxLink struct{ l link.Link }

func (tcxAttacher) attach(ifindex int, prog *ebpf.Program, egress bool) (detacher, error) {
	at := ebpf.AttachTCXIngress
	if egress {
		at = ebpf.AttachTCXEgress
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: at})
	if err != nil {
		return nil, err
	}
	return tcxLink{l}, nil
}

func (t tcxLink) detach() error { return t.l.Close() }

// tcAttacher attaches direct-action BPF filters to clsact qdiscs, named
// after the tunnel, so a later run finds and removes what a crash left.
type tcAttacher struct {
	name   string // TCA_BPF_NAME of every filter of this tunnel
	handle uint32 // the filter handle: the tunnel's ifindex
}

const tcPriority = 1

type tcFilter struct {
	f *netlink.BpfFilter
}

func clsact(ifindex int) *netlink.GenericQdisc {
	return &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
}

func (t *tcAttacher) attach(ifindex int, prog *ebpf.Program, egress bool) (detacher, error) {
	if err := netlink.QdiscAdd(clsact(ifindex)); err != nil && !errors.Is(err, syscall.EEXIST) {
		return nil, fmt.Errorf("clsact qdisc: %w", err)
	}
	parent := uint32(netlink.HANDLE_MIN_INGRESS)
	if egress {
		parent = netlink.HANDLE_MIN_EGRESS
	}
	f := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: ifindex, Parent: parent, Handle: t.handle,
			Priority: tcPriority, Protocol: unix.ETH_P_ALL},
		Fd: prog.FD(), Name: t.name, DirectAction: true,
	}
	if err := netlink.FilterReplace(f); err != nil {
		removeEmptyClsact(ifindex)
		return nil, fmt.Errorf("bpf filter: %w", err)
	}
	return tcFilter{f}, nil
}

func (f tcFilter) detach() error {
	err := netlink.FilterDel(f.f)
	if errors.Is(err, syscall.ENODEV) || errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.EINVAL) {
		err = nil // the interface is gone, and the filter with it
	}
	removeEmptyClsact(f.f.LinkIndex)
	return err
}

// removeEmptyClsact deletes an interface's clsact qdisc once no filter is
// left on it (ours were its only users, or it was a leftover).
func removeEmptyClsact(ifindex int) {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return
	}
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		fs, err := netlink.FilterList(l, parent)
		if err != nil || len(fs) > 0 {
			return
		}
	}
	qs, err := netlink.QdiscList(l)
	if err != nil {
		return
	}
	for _, q := range qs {
		if q.Type() == "clsact" {
			netlink.QdiscDel(clsact(ifindex))
		}
	}
}

// cleanup removes the filters an earlier run of this tunnel left on any
// interface (a crash does not detach them), and the clsact qdiscs that
// are then empty.
func (t *tcAttacher) cleanup() error {
	ls, err := netlink.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return err
	}
	var errs []error
	for _, l := range ls {
		found := false
		for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
			fs, err := netlink.FilterList(l, parent)
			if err != nil {
				continue // no clsact there
			}
			for _, f := range fs {
				if bf, ok := f.(*netlink.BpfFilter); ok && bf.Name == t.name {
					found = true
					if err := netlink.FilterDel(bf); err != nil && !errors.Is(err, syscall.ENOENT) {
						errs = append(errs, fmt.Errorf("%s: %w", l.Attrs().Name, err))
					}
				}
			}
		}
		if found {
			removeEmptyClsact(l.Attrs().Index)
		}
	}
	return errors.Join(errs...)
}
