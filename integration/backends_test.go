package integration

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/gre/ebpf"
)

// backends are the data planes the end-to-end tests run against.
var backends = []string{"userspace", "kernel", "ebpf"}

// forEachBackend runs body as a parallel subtest per backend; the kernel
// subtest skips, saying why, where the kernel cannot create GRE devices,
// and the ebpf subtest where BPF programs cannot be loaded.
func forEachBackend(t *testing.T, body func(t *testing.T, be string), only ...string) {
	t.Helper()
	for _, be := range backends {
		if len(only) > 0 && !contains(only, be) {
			continue
		}
		t.Run(be, func(t *testing.T) {
			switch be {
			case "kernel":
				needKernelGRE(t)
			case "ebpf":
				needBPF(t)
			}
			t.Parallel()
			body(t, be)
		})
	}
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

var (
	greProbeOnce sync.Once
	greProbeErr  error
)

// greAvailable reports whether this kernel creates GRE devices.
func greAvailable(t *testing.T) bool {
	t.Helper()
	probeGRE()
	return greProbeErr == nil
}

// needKernelGRE skips unless `ip link add … type gre` works here (probed
// once, in a scratch namespace).
func needKernelGRE(t *testing.T) {
	t.Helper()
	needRoot(t)
	probeGRE()
	if greProbeErr != nil {
		t.Skipf("skipping the kernel backend: needs ip_gre, and this kernel cannot create GRE devices (%v); these tests run unchanged on a kernel with ip_gre (and in the VM: TestKernelBackendInVM)", greProbeErr)
	}
}

// probeGRE tries `ip link add … type gre` once, in a scratch namespace.
func probeGRE() {
	greProbeOnce.Do(func() {
		ns := fmt.Sprintf("dmvtgreprobe%d", time.Now().UnixNano()%1e9)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if out, err := exec.CommandContext(ctx, "ip", "netns", "add", ns).CombinedOutput(); err != nil {
			greProbeErr = fmt.Errorf("ip netns add: %v: %s", err, out)
			return
		}
		defer exec.Command("ip", "netns", "del", ns).Run()
		if out, err := exec.CommandContext(ctx, "ip", "-n", ns, "link", "add", "probe0", "type", "gre", "key", "1").CombinedOutput(); err != nil {
			greProbeErr = fmt.Errorf("ip link add … type gre refused: %s", strings.TrimSpace(string(out)))
		}
	})
}

// needBPF skips unless this kernel and these privileges load the ebpf
// backend's programs.
func needBPF(t *testing.T) {
	t.Helper()
	needRoot(t)
	if err := ebpf.Available(); err != nil {
		t.Skipf("skipping the ebpf backend: needs a kernel that loads its BPF programs (BTF, TC BPF): %v", err)
	}
}
