package integration

import (
	"context"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/integration/vm"
)

// TestKernelBackendInVM runs the kernel-backend end-to-end tests inside a
// VM booted from Debian's kernel, which has ip_gre, so the backend is
// exercised here too and not only on kernels that have it natively.
func TestKernelBackendInVM(t *testing.T) {
	t.Parallel() // overlaps the other VM tests (two VMs at once)
	if !vm.InGuest() {
		needRoot(t, "ping")
		if greAvailable(t) {
			t.Skip("skipping: nothing is missing, the VM is not needed: this kernel has ip_gre, so the kernel-backend subtests of the other integration tests run natively")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute) // with the wait for a VM slot
		defer cancel()
		vm.RunTest(ctx, t, vm.Require(t), vm.Config{Timeout: 10 * time.Minute, Memory: 768, CPUs: 2})
		return
	}
	needKernelGRE(t)
	for _, tc := range []struct {
		name string
		body func(*testing.T, string)
	}{
		{"TunnelEndpointsPing", testTunnelEndpointsPing},
		{"LANHostsThroughTunnel", testLANHostsThroughTunnel},
		{"NeighborMissAndHoldQueue", testNeighborMissAndHoldQueue},
		{"ShortcutTableWithRule", testShortcutTableWithRule},
		{"NHRPThroughNAT", testNHRPThroughNAT},
		{"MulticastReplicated", testMulticastReplicated},
		{"FragNeededOverSmallPath", testFragNeededOverSmallPath},
		{"KeyMismatch", testKeyMismatch},
		{"IPv6OverTunnel", testIPv6OverTunnel},
		{"ChecksumAndSequence", testChecksumAndSequence},
		{"WireFormat", testWireFormat},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel() // two at a time (two vCPUs), each in its own namespaces
			tc.body(t, "kernel")
		})
	}
}
