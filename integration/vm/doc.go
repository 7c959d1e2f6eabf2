// Package vm runs commands inside a throw-away QEMU VM booted from the
// host's own installed Debian kernel, for tests that need kernel features the
// development and CI machines lack (ip_gre, kernel ESP/xfrm): the kernel
// backend, kernel IPsec, FRR's nhrpd.
//
// # The VM
//
// FindKernel picks the newest /boot/vmlinuz-<version> that has a matching
// /lib/modules/<version> (or the one named by $DMVPN_VM_KERNEL). Prepare
// extracts its ELF kernel (booted through PVH, which saves ~2 s of xz
// decompression under TCG) and builds a ~1.5 MB initramfs of busybox-static,
// the virtio, 9p and overlay modules and two small scripts (guest/init.sh,
// guest/stage2.sh), caching both under build/vm/<version>/ and rebuilding
// them when the kernel version or any input changes (`make vm-clean` drops
// the cache).
//
// Image.Run boots it under QEMU TCG (KVM is not available here): the
// guest's root is the host's /, read-only over virtio-9p, under a tmpfs
// overlay, so the guest sees every host file (binaries, the repository, the
// test binary itself) and may write anywhere, all discarded at power-off.
// /run is an empty tmpfs, /tmp the host's through the overlay. The guest
// modprobes any module of the host's /lib/modules (ip_gre, esp4, xfrm_user,
// veth, tun, …) and `ip netns` works. One command runs as root with the
// given working directory and environment; its exit status and combined
// output come back in Result. Config.Shares mounts host directories
// read-write at the same path, for files the host must see (captures).
// Config.NetNS and Config.NICs connect the VM to a host network namespace
// through TAP devices (AddTAP), each NIC with its own MAC (NewMAC). Two VMs
// run at once on the 2-core machines, across test processes: Run waits for
// one of DefaultSlots machine-wide slots ($DMVPN_VM_SLOTS), and VMs that
// must run together take theirs at once with Reserve. -m 256 is enough for
// FRR with a hub and two spokes. Measured here: QEMU start → command ≈ 3–3.5 s
// (kernel ≈ 2 s, initramfs modules ≈ 0.5 s), command exit → QEMU gone
// ≈ 0.1–0.7 s.
//
// # Tests
//
// Require gives a test the prepared image; it skips only when not root or
// when QEMU cannot start at all, and fails on anything else. The cheapest way
// to run Go code in the guest is the test binary that is already running:
// the host half of a test calls RunTest, which runs the same binary, limited
// to the same test, inside the VM; the guest half is guarded by InGuest:
//
//	func TestKernelBackend(t *testing.T) {
//		if !vm.InGuest() {
//			vm.RunTest(ctx, t, vm.Require(t), vm.Config{})
//			return
//		}
//		// runs in the VM, as root, with ip_gre available
//		...
//	}
//
// A command of ours is built on the host by GoBuild and run by its path,
// since the guest sees the host's files; a test binary of another package
// likewise, built with `go test -c -o DIR/x.test ./pkg`:
//
//	bin := vm.GoBuild(t, "./cmd/dmvpnd")
//	res, err := img.Run(ctx, vm.Config{Shares: []string{dir}}, bin, "-config", dir+"/hub.yaml")
//
// Every process started under TCG costs 0.1–0.7 s, so poll kernel state
// from one process rather than running many small commands.
//
// The package's own tests (root; `make test`, or `go test ./integration/vm`)
// boot 5 VMs, two of them at once, in ≈ 30 s; all VM tests of the project
// together must stay within 5 minutes of CI time. Each logs its boot time;
// `go test -run '^$' -bench Boot ./integration/vm` measures a bare boot.
package vm
