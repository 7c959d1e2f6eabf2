//go:build !linux

package daemon

import (
	"context"
	"errors"
	"net/netip"

	"github.com/opendmvpn/dmvpn/failover"
	"github.com/opendmvpn/dmvpn/firewall/redirect"
	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/host"
	"github.com/opendmvpn/dmvpn/nhrp"
)

var errLinux = errors.New("dmvpnd needs Linux")

type kernelRouter struct{}

func newKernelRouter(context.Context, gre.Info, Config) (*kernelRouter, error) { return nil, errLinux }
func (r *kernelRouter) setNetworks([]netip.Prefix)                             {}
func (r *kernelRouter) setUplinks(*failover.Config)                            {}
func (r *kernelRouter) close() error                                           { return nil }

// Route implements nhrp.Router.
func (r *kernelRouter) Route(context.Context, netip.Addr) (nhrp.RouteInfo, error) {
	return nhrp.RouteInfo{}, errLinux
}

func neighLimitsExist(host.Kernel, string) bool { return false }
func startRedirect(context.Context, Config, *nhrp.Engine, redirect.TableOwner) (redirect.Watcher, error) {
	return nil, errLinux
}
