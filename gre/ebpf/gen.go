package ebpf

// The BPF object and its Go bindings are generated from dataplane.c and
// committed, so building needs no clang; `make bpf-check` regenerates them
// and fails if they differ.
//go:generate go tool bpf2go -cc clang-14 -strip llvm-strip-14 -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel,bpfeb -type dp_config -type neighbor -type peer_stats dataplane dataplane.c
