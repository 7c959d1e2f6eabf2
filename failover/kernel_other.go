//go:build !linux

package failover

import (
	"context"
	"errors"
	"net/netip"
)

// errUnsupported: uplink failover needs Linux.
var errUnsupported = errors.New("failover: needs Linux")

// ICMPProbers opens probers on raw ICMP sockets (Linux only).
type ICMPProbers struct{}

// Open implements ProberFactory.
func (ICMPProbers) Open(Uplink, Link, func(Reply)) (Prober, error) { return nil, errUnsupported }

// NetlinkKernel reads the uplinks' interfaces from the kernel (Linux only).
type NetlinkKernel struct{}

// NewNetlinkKernel fails: Linux only.
func NewNetlinkKernel(int) (*NetlinkKernel, error) { return nil, errUnsupported }

// Changes implements Kernel.
func (*NetlinkKernel) Changes() <-chan struct{} { return nil }

// Close does nothing.
func (*NetlinkKernel) Close() error { return nil }

// Link implements Kernel.
func (*NetlinkKernel) Link(context.Context, string) (Link, error) { return Link{}, errUnsupported }

// NetlinkConntrack ends tracked connections (Linux only).
type NetlinkConntrack struct{}

// Flush implements Conntrack.
func (NetlinkConntrack) Flush(context.Context, netip.Addr, uint32, uint32) (int, error) {
	return 0, errUnsupported
}
