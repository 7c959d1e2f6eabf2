package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
)

// The kernel data plane at scale (-frr -kscale N): N spokes register with
// dmvpnd as the hub on ip_gre in the VM (the side-by-side benchmark's rig:
// the same simulator on the host, the same guest agent), and the run
// checks what the hub must do at that size beyond answering: every
// registered spoke in the kernel's neighbour table with its NBMA address,
// and the table's limits raised by dmvpnd itself from limits.max_entries
// (the guest puts them back to the kernel's defaults, 128/512/1024,
// before the hub starts).

// kscaleMaxEntries is the limits.max_entries the scale run configures for
// n spokes: room for all of them and a quarter more.
func kscaleMaxEntries(n int) int { return max(16, n+n/4) }

// wantThresh is what dmvpnd sets gc_thresh1-3 to from max_entries
// (daemon.neighLimits: max_entries + 1024, all three, so that the kernel
// collects none of the spokes' entries while the table has room).
func wantThresh(maxEntries int) [3]int {
	t := maxEntries + 1024
	return [3]int{t, t, t}
}

// readThresh reads the IPv4 neighbour table's gc_thresh1-3.
func readThresh() ([3]int, error) {
	var t [3]int
	for i := range t {
		b, err := os.ReadFile(fmt.Sprintf("/proc/sys/net/ipv4/neigh/default/gc_thresh%d", i+1))
		if err != nil {
			return t, err
		}
		if t[i], err = strconv.Atoi(strings.TrimSpace(string(b))); err != nil {
			return t, err
		}
	}
	return t, nil
}

// neighCheck compares the tunnel's neighbour table with spokes 0..n-1 of
// the simulator: how many have an entry with their NBMA address, how many
// have none, and how many have another address.
type neighCheck struct {
	Present int   `json:"present"`
	Missing int   `json:"missing"`
	Wrong   int   `json:"wrong"`
	First   []int `json:"first_missing,omitempty"` // the first few missing
}

func checkNeighbours(n int) (neighCheck, error) {
	var c neighCheck
	l, err := netlink.LinkByName(benchTun)
	if err != nil {
		return c, err
	}
	ns, err := netlink.NeighList(l.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		return c, err
	}
	have := make(map[netip.Addr]netip.Addr, len(ns))
	for _, e := range ns {
		if e.State&(netlink.NUD_INCOMPLETE|netlink.NUD_FAILED) != 0 {
			continue
		}
		ll := e.LLIPAddr
		if len(ll) == 0 {
			ll = net.IP(e.HardwareAddr)
		}
		p, ok1 := netip.AddrFromSlice(e.IP)
		a, ok2 := netip.AddrFromSlice(ll)
		if ok1 && ok2 {
			have[p.Unmap()] = a.Unmap()
		}
	}
	for i := range n {
		a, ok := have[spokeProto(i)]
		switch {
		case !ok:
			c.Missing++
			if len(c.First) < 5 {
				c.First = append(c.First, i)
			}
		case a != spokeNBMA(i):
			c.Wrong++
		default:
			c.Present++
		}
	}
	return c, nil
}

// kscaleLoad is the load generator's side of the scale run.
func kscaleLoad(a *agent, g *loadgen, o frrOpts) error {
	n := o.KScale
	maxEntries := kscaleMaxEntries(n)
	if _, err := a.do(order{Op: "start", Impl: "ours", Spokes: n, Dmvpnd: o.Dmvpnd, MaxEntries: maxEntries}); err != nil {
		return err
	}
	defer a.do(order{Op: "stop"})
	w, err := g.register(warmOpts(1, 1<<20))
	if err != nil || w.Answered != 1 {
		return fmt.Errorf("dmvpnd did not answer a first registration: %v", err)
	}
	before, err := a.do(order{Op: "measure"})
	if err != nil {
		return err
	}
	fmt.Printf("scale: %d spokes register with dmvpnd (dataplane: kernel, limits.max_entries %d) on ip_gre in the VM, %d outstanding\n", n, maxEntries, o.Window)
	st, err := g.register(regOpts{N: n, Window: o.Window, Retry: time.Second, Deadline: 30 * time.Minute, IDBase: 2 << 20})
	if err != nil {
		return err
	}
	// Neighbours are installed off the reply path: wait until every one
	// is there or their count stops moving for 5 s.
	var after answer
	settled := time.Now()
	start := time.Now()
	prev := -1
	for {
		if after, err = a.do(order{Op: "measure"}); err != nil {
			return err
		}
		if after.Neigh >= st.Answered+1 {
			break
		}
		if after.Neigh != prev {
			prev, settled = after.Neigh, time.Now()
		} else if time.Since(settled) > 5*time.Second {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	neighWait := time.Since(start)
	chk, err := a.do(order{Op: "neighcheck", Spokes: n})
	if err != nil {
		return err
	}
	r := frrRun{Impl: "ours", N: n, Stats: st, Before: before, After: after}
	rss, _ := r.perSpoke()
	want := wantThresh(maxEntries)
	fmt.Printf("  registered: %d/%d answered (%d refused) in %v, %.0f/s, p50 %v p99 %v, %d sends\n",
		st.Answered, n, st.Refused, st.Elapsed.Round(time.Millisecond), st.rate(), st.P50.Round(100*time.Microsecond), st.P99.Round(100*time.Microsecond), st.Sends)
	fmt.Printf("  dmvpnd: RSS %.1f → %.1f MiB, +%.2f KiB per spoke; CPU %v per registration; %d entries; drops %v, data plane %v\n",
		float64(before.RSS["dmvpnd"])/(1<<20), float64(after.RSS["dmvpnd"])/(1<<20), rss/1024, r.cpuPerReg().Round(time.Microsecond),
		after.Ours.Entries, after.Ours.Dropped, after.Ours.DPDrops)
	fmt.Printf("  kernel: %d neighbours on %s (%d in the IPv4 table), table_fulls +%d, all in %v after the last reply; spokes with their NBMA address %d, missing %d, wrong address %d\n",
		after.Neigh, benchTun, after.NeighTotal, after.TableFulls-before.TableFulls, neighWait.Round(100*time.Millisecond),
		chk.Check.Present, chk.Check.Missing, chk.Check.Wrong)
	fmt.Printf("  gc_thresh1-3 %v, set by dmvpnd from max_entries %d (want at least %v; the guest started it at 128/512/1024)\n",
		after.Thresh, maxEntries, want)
	var errs []error
	if st.Answered != n || st.Refused != 0 {
		errs = append(errs, fmt.Errorf("%d of %d spokes answered, %d refused", st.Answered, n, st.Refused))
	}
	if chk.Check.Present != n {
		errs = append(errs, fmt.Errorf("%d of %d registered spokes in the kernel's neighbour table (missing %d, e.g. spokes %v; wrong address %d)",
			chk.Check.Present, n, chk.Check.Missing, chk.Check.First, chk.Check.Wrong))
	}
	for i := range want {
		if after.Thresh[i] < want[i] {
			errs = append(errs, fmt.Errorf("gc_thresh%d is %d, want at least %d", i+1, after.Thresh[i], want[i]))
		}
	}
	return errors.Join(errs...)
}
