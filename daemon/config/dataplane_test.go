package config

import (
	"strings"
	"testing"

	"github.com/opendmvpn/dmvpn/gre/backend"
)

// TestDataplaneChoices: every backend name is accepted, others are refused
// with the list of choices.
func TestDataplaneChoices(t *testing.T) {
	for _, kind := range []backend.Kind{backend.Auto, backend.Kernel, backend.Ebpf, backend.Userspace} {
		c, err := Parse([]byte(inClear(minimal+"  dataplane: "+string(kind)+"\n")), "test.yaml")
		if err != nil {
			t.Fatalf("dataplane %s: %v", kind, err)
		}
		if c.Tunnel.Dataplane != kind {
			t.Errorf("dataplane %s parsed as %q", kind, c.Tunnel.Dataplane)
		}
	}
	errs := errorLines(t, inClear(minimal+"  dataplane: xdp\n"))
	if len(errs) != 1 || !strings.Contains(errs[0], "ebpf") {
		t.Errorf("errors %q, want one naming the choices", errs)
	}
}
