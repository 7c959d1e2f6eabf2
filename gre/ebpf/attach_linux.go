package ebpf

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/opendmvpn/dmvpn/gre/internal/nlops"
)

// Interface flags of dataplane.c's ifaces map.
const (
	ifL2     = 1 // an Ethernet header precedes the IP header
	ifRefuse = 2 // the ingress gate refuses GRE arriving here
	ifIPsec  = 4 // charon's ipsec TUN
)

// iface is an interface the ingress program runs on.
type iface struct {
	det detacher
	l2  bool
}

// follow lists the interfaces and addresses there are, attaches the
// ingress program, and keeps following both from netlink in a goroutine.
// It subscribes before listing, so nothing that happens in between is
// missed (handling an interface or address twice is harmless).
func (d *Device) follow() error {
	links, addrs, err := d.subscribe()
	if err != nil {
		return err
	}
	if err := d.syncLinks(); err != nil {
		return err
	}
	if err := d.syncAddrs(); err != nil {
		return err
	}
	d.wg.Add(1)
	go d.followLoop(links, addrs)
	return nil
}

func (d *Device) subscribe() (chan netlink.LinkUpdate, chan netlink.AddrUpdate, error) {
	links := make(chan netlink.LinkUpdate, 256)
	addrs := make(chan netlink.AddrUpdate, 256)
	if err := netlink.LinkSubscribeWithOptions(links, d.done, netlink.LinkSubscribeOptions{ErrorCallback: func(error) {}}); err != nil {
		return nil, nil, fmt.Errorf("ebpf: following interfaces: %w", err)
	}
	if err := netlink.AddrSubscribeWithOptions(addrs, d.done, netlink.AddrSubscribeOptions{ErrorCallback: func(error) {}}); err != nil {
		return nil, nil, fmt.Errorf("ebpf: following addresses: %w", err)
	}
	return links, addrs, nil
}

// followLoop applies interface and address events until Close. A
// subscription that fails (its channel closes: lost events, dead socket)
// is replaced and everything is listed again.
func (d *Device) followLoop(links chan netlink.LinkUpdate, addrs chan netlink.AddrUpdate) {
	defer d.wg.Done()
	for {
		select {
		case <-d.done:
			return
		case u, ok := <-links:
			if ok {
				d.linkEvent(u)
				continue
			}
		case _, ok := <-addrs:
			if ok {
				d.syncAddrs()
				continue
			}
		}
		// A subscription ended: resubscribe and list again.
		for {
			select {
			case <-d.done:
				return
			case <-time.After(200 * time.Millisecond):
			}
			var err error
			if links, addrs, err = d.subscribe(); err == nil {
				break
			}
		}
		d.syncLinks()
		d.syncAddrs()
	}
}

func (d *Device) linkEvent(u netlink.LinkUpdate) {
	if u.Header.Type == unix.RTM_DELLINK {
		d.linkGone(int(u.Index))
		return
	}
	d.linkSeen(u.Link)
}

// syncLinks handles every interface there is and forgets those gone.
func (d *Device) syncLinks() error {
	ls, err := netlink.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return fmt.Errorf("ebpf: listing interfaces: %w", err)
	}
	seen := map[int]bool{}
	for _, l := range ls {
		seen[l.Attrs().Index] = true
		d.linkSeen(l)
	}
	d.mu.Lock()
	var gone []int
	for idx := range d.ifs {
		if !seen[idx] {
			gone = append(gone, idx)
		}
	}
	d.mu.Unlock()
	for _, idx := range gone {
		d.linkGone(idx)
	}
	return nil
}

// linkSeen attaches the ingress program to a new interface and refreshes
// the flags of a known one; for the TUN it follows the MTU.
func (d *Device) linkSeen(l netlink.Link) {
	a := l.Attrs()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	if a.Index == d.tunIndex {
		if a.MTU > 0 && uint32(a.MTU) != d.dpCfg.TunMtu {
			d.dpCfg.TunMtu = uint32(a.MTU)
			if err := d.objs.Config.Put(uint32(0), d.dpCfg); err != nil {
				d.lastErr = err
			}
		}
		return
	}
	var l2 bool
	switch a.EncapType {
	case "ether":
		l2 = true
	case "none", "ppp":
	default:
		return // loopback and link types whose headers the program does not parse
	}
	f := d.ifs[a.Index]
	if f == nil {
		det, err := d.att.attach(a.Index, d.objs.DmvpnIngress, false)
		if err != nil {
			// GRE arriving there takes the slow path (the raw socket,
			// which asks the ingress gate itself).
			d.lastErr = fmt.Errorf("attaching to %s ingress: %w", a.Name, err)
			return
		}
		f = &iface{det: det, l2: l2}
		d.ifs[a.Index] = f
	}
	if err := d.setFlags(a.Index, f); err != nil {
		d.lastErr = err
	}
}

// setFlags writes an interface's flags; d.mu is held.
func (d *Device) setFlags(idx int, f *iface) error {
	var fl uint32
	if f.l2 {
		fl |= ifL2
	}
	if d.cfg.AcceptIngress != nil && !d.cfg.AcceptIngress(idx) {
		fl |= ifRefuse
	}
	if d.isIPsec != nil && d.isIPsec(idx) {
		fl |= ifIPsec
	}
	if err := d.objs.Ifaces.Put(uint32(idx), fl); err != nil {
		return fmt.Errorf("ebpf: interface %d: %w", idx, err)
	}
	return nil
}

// linkGone forgets an interface (the kernel detached its programs).
func (d *Device) linkGone(idx int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	f := d.ifs[idx]
	if f == nil {
		return
	}
	delete(d.ifs, idx)
	d.objs.Ifaces.Delete(uint32(idx))
	f.det.detach()
}

// syncAddrs makes the local_addrs map the namespace's IPv4 addresses.
func (d *Device) syncAddrs() error {
	as, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return fmt.Errorf("ebpf: listing addresses: %w", err)
	}
	now := map[netip.Addr]bool{}
	for _, a := range as {
		if ad := nlops.Addr(a.IP); ad.Is4() {
			now[ad] = true
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	var errs []error
	for a := range now {
		if !d.locals[a] {
			if err := d.objs.LocalAddrs.Put(be32(a), uint32(1)); err != nil {
				errs = append(errs, err)
				continue
			}
			d.locals[a] = true
		}
	}
	for a := range d.locals {
		if !now[a] {
			d.objs.LocalAddrs.Delete(be32(a))
			delete(d.locals, a)
		}
	}
	return errors.Join(errs...)
}

// detacher removes one program from one interface.
type detacher interface{ detach() error }

// attacher attaches programs to interfaces: TCX links (Linux 6.6 and
// later; they go with the last file descriptor, so a crash leaves nothing)
// or, on older kernels, clsact filters through netlink (which outlive the
// process: the next start removes them).
type attacher interface {
	attach(ifindex int, prog *ebpf.Program, egress bool) (detacher, error)
}

// AttachEnv overrides how programs are attached: "tcx" or "tc" (clsact
// filters); unset chooses TCX where the kernel has it, else clsact.
const AttachEnv = "DMVPN_EBPF_ATTACH"

// attachEgress chooses the attacher and attaches the egress program to
// the TUN with it, removing first what a crashed run of this tunnel left.
func (d *Device) attachEgress() error {
	tc := &tcAttacher{name: "dmvpn:" + d.cfg.Name, handle: uint32(d.tunIndex)}
	if err := tc.cleanup(); err != nil {
		return fmt.Errorf("ebpf: removing an earlier run's filters: %w", err)
	}
	mode := os.Getenv(AttachEnv)
	switch mode {
	case "tc":
		d.att = tc
	case "tcx", "":
		d.att = tcxAttacher{}
	default:
		return fmt.Errorf("ebpf: %s=%q: want tcx or tc", AttachEnv, mode)
	}
	det, err := d.att.attach(d.tunIndex, d.objs.DmvpnEgress, true)
	if err != nil && mode == "" && errors.Is(err, ebpf.ErrNotSupported) {
		d.att = tc // a kernel before 6.6
		det, err = d.att.attach(d.tunIndex, d.objs.DmvpnEgress, true)
	}
	if err != nil {
		return fmt.Errorf("ebpf: attaching to %s egress: %w", d.cfg.Name, err)
	}
	d.egress = det
	return nil
}
