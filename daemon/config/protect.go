package config

import "github.com/opendmvpn/dmvpn/gre/backend"

// checkProtection refuses a data plane that IPsec's mode cannot protect:
// kernel ESP (xfrm) with a data plane whose GRE does not pass the
// kernel's xfrm (the ebpf fast path redirects GRE past it: GRE would
// leave in clear). Auto is checked at start, once the data plane is
// chosen.
func (c *Config) checkProtection(d *decoder) {
	s := c.IPsec
	if s == nil || s.Mode != "kernel" {
		return
	}
	if caps, ok := backend.Capabilities(c.Tunnel.Dataplane); ok && !caps.XfrmESP {
		why := "its GRE does not pass the kernel's xfrm"
		if caps.FastPath {
			why = "its fast path redirects GRE past the kernel's xfrm"
		}
		d.errorAt("ipsec.mode", "kernel with tunnel.dataplane: %s: %s, so GRE would leave in clear; use ipsec.mode: userspace, or tunnel.dataplane: kernel", c.Tunnel.Dataplane, why)
	}
}
