package integration

import (
	"fmt"
	"os"
	"runtime"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// bpfLeftovers lists the BPF programs (TCX links, clsact filters) and
// clsact qdiscs left on the interfaces of a namespace: after the ebpf
// data plane stops there must be none. It looks from a thread moved into
// the namespace, which returns to its own afterwards.
func bpfLeftovers(t *testing.T, ns string) []string {
	t.Helper()
	type result struct {
		left []string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: err}
			return
		}
		defer self.Close()
		f, err := os.Open("/run/netns/" + ns)
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- result{err: err}
			return
		}
		var r result
		links, err := netlink.LinkList()
		r.err = err
		for _, l := range links {
			name, idx := l.Attrs().Name, l.Attrs().Index
			for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
				if q, err := link.QueryPrograms(link.QueryOptions{Target: idx, Attach: at}); err == nil && len(q.Programs) > 0 {
					r.left = append(r.left, fmt.Sprintf("%s: %d TCX programs (%v)", name, len(q.Programs), at))
				}
			}
			qs, _ := netlink.QdiscList(l)
			for _, q := range qs {
				if q.Type() == "clsact" {
					r.left = append(r.left, name+": clsact qdisc")
				}
			}
		}
		if unix.Setns(int(self.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		done <- r
	}()
	r := <-done
	if r.err != nil {
		t.Fatalf("looking for BPF leftovers in %s: %v", ns, r.err)
	}
	return r.left
}
