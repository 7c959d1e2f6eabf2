// Command udpflows sends one UDP datagram from each of n sockets — n
// source ports, n flows — to an address: the tests count where new flows
// go over a weighted multipath default route.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
)

func main() {
	dst := flag.String("dst", "", "destination address:port")
	n := flag.Int("n", 100, "flows (one datagram each, each from its own port)")
	flag.Parse()
	for i := range *n {
		c, err := net.Dial("udp4", *dst)
		if err != nil {
			fmt.Fprintf(os.Stderr, "udpflows: flow %d: %v\n", i, err)
			os.Exit(1)
		}
		if _, err := c.Write([]byte("dmvpn-flow")); err != nil {
			fmt.Fprintf(os.Stderr, "udpflows: flow %d: %v\n", i, err)
			os.Exit(1)
		}
		c.Close()
	}
}
