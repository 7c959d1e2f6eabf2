//go:build !linux

// Command benchbgp measures the hub's BGP side by side with FRR in network
// namespaces; it needs Linux.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "bench-bgp needs Linux")
	os.Exit(1)
}
