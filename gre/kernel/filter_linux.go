package kernel

import (
	"unsafe"

	"golang.org/x/net/bpf"
)

// rawFilterPtr points at the first instruction of an assembled classic
// BPF program (bpf.RawInstruction has the layout of struct sock_filter).
func rawFilterPtr(f []bpf.RawInstruction) unsafe.Pointer { return unsafe.Pointer(&f[0]) }
