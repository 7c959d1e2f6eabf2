//go:build !linux

// Command benchnhrp measures the NHRP hub under load in network
// namespaces; it needs Linux.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "bench-nhrp needs Linux")
	os.Exit(1)
}
