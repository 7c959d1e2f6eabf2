// Package ebpf is the GRE data plane for kernels without ip_gre that run
// BPF: the userspace backend's TUN device, neighbour mirror, control
// plane and slow path, with the forwarding moved into two TC programs.
package ebpf
