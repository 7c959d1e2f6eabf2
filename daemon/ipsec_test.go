package daemon

import (
	"testing"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/gre/ebpf"
	"github.com/opendmvpn/dmvpn/gre/kernel"
	"github.com/opendmvpn/dmvpn/gre/userspace"
	"github.com/opendmvpn/dmvpn/ipsec"
)

// TestProtectionByCapabilities: every data plane with every IPsec mode
// either runs protected or is refused at start naming the combination,
// decided by what the data plane answers, never by its name.
func TestProtectionByCapabilities(t *testing.T) {
	routed := userspace.ProtoRouted()
	for _, c := range []struct {
		info    gre.Info
		mode    ipsec.Mode
		auto    ipsec.Mode // what auto resolves to
		refused bool
	}{
		{gre.Info{Backend: "kernel", Caps: kernel.Caps}, ipsec.ModeKernel, ipsec.ModeKernel, false},
		{gre.Info{Backend: "kernel", Caps: kernel.Caps}, ipsec.ModeUserspace, ipsec.ModeKernel, false},
		{gre.Info{Backend: "userspace", Caps: userspace.Caps()}, ipsec.ModeUserspace, ipsec.ModeUserspace, !routed},
		{gre.Info{Backend: "userspace", Caps: userspace.Caps()}, ipsec.ModeKernel, ipsec.ModeUserspace, !routed},
		{gre.Info{Backend: "ebpf", Caps: ebpf.Caps()}, ipsec.ModeUserspace, ipsec.ModeUserspace, !routed},
		{gre.Info{Backend: "ebpf", Caps: ebpf.Caps()}, ipsec.ModeKernel, ipsec.ModeUserspace, true},
	} {
		why := protects(c.mode, c.info)
		if (why != "") != c.refused {
			t.Errorf("%s data plane, %s ESP: refused %q, want refused %v", c.info.Backend, c.mode, why, c.refused)
		}
		if c.refused && why != "" && !contains(why, c.info.Backend+" data plane") {
			t.Errorf("the refusal does not name the combination: %q", why)
		}
		if m, _ := ipsecMode(ipsec.ModeAuto, c.info); m != c.auto {
			t.Errorf("%s data plane: auto resolves to %s, want %s", c.info.Backend, m, c.auto)
		}
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}
