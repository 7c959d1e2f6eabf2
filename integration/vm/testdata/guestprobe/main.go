// Command guestprobe is built on the host by TestRun (vm.GoBuild) and run in
// the guest: it prints its arguments and the kernel release it runs on.
package main

import (
	"fmt"
	"os"
	"strings"
)

func main() {
	rel, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("guestprobe %q on %s\n", os.Args[1:], strings.TrimSpace(string(rel)))
}
