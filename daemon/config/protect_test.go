package config

import (
	"os"
	"strings"
	"testing"

	"github.com/opendmvpn/dmvpn/gre/backend"
)

// TestProtectionCombinations: every data plane with every IPsec mode is
// accepted only where the mode protects the data plane's GRE; kernel ESP
// with the ebpf fast path (which redirects GRE past xfrm) is refused,
// naming the combination. Auto is checked at start.
func TestProtectionCombinations(t *testing.T) {
	raw, err := os.ReadFile("../../examples/spoke1.yaml")
	if err != nil {
		t.Fatal(err)
	}
	base := string(examplePKI(t)(raw))
	for _, dp := range []backend.Kind{backend.Auto, backend.Kernel, backend.Ebpf, backend.Userspace} {
		for _, mode := range []string{"auto", "kernel", "userspace"} {
			file := strings.Replace(base, "tunnel:\n", "tunnel:\n  dataplane: "+string(dp)+"\n", 1)
			file = strings.Replace(file, "  mode: auto ", "  mode: "+mode+" ", 1)
			_, err := Parse([]byte(file), "spoke1.yaml")
			caps, known := backend.Capabilities(dp)
			refused := mode == "kernel" && known && !caps.XfrmESP
			switch {
			case refused && (err == nil || !strings.Contains(err.Error(), "ipsec.mode: kernel with tunnel.dataplane: "+string(dp))):
				t.Errorf("dataplane %s, ipsec mode %s: %v, want refused naming the combination", dp, mode, err)
			case !refused && err != nil:
				t.Errorf("dataplane %s, ipsec mode %s: %v", dp, mode, err)
			}
		}
	}
	if caps, _ := backend.Capabilities(backend.Ebpf); caps.XfrmESP {
		t.Error("the ebpf data plane claims kernel ESP protects its fast path")
	}
}
