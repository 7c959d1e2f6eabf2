package backend

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/gre/gretest"
)

func fakes(t *testing.T, kernelErr, userErr error, ebpfErr ...error) *[]string {
	t.Helper()
	var calls []string
	okDev := func(name string) gre.Device {
		in := gretest.NewInternet()
		d, err := in.NewDevice(gretest.Config{Name: name, NBMA: mustAddr("192.0.2.1")})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		return d
	}
	ok, oe, ou := openKernel, openEbpf, openUserspace
	t.Cleanup(func() { openKernel, openEbpf, openUserspace = ok, oe, ou })
	openEbpf = func(cfg gre.Config) (gre.Device, error) {
		calls = append(calls, "ebpf")
		if len(ebpfErr) > 0 && ebpfErr[0] != nil {
			return nil, ebpfErr[0]
		}
		return okDev("ebpf"), nil
	}
	openKernel = func(cfg gre.Config) (gre.Device, error) {
		calls = append(calls, "kernel")
		if kernelErr != nil {
			return nil, kernelErr
		}
		return okDev("kernel"), nil
	}
	openUserspace = func(cfg gre.Config) (gre.Device, error) {
		calls = append(calls, "userspace")
		if userErr != nil {
			return nil, userErr
		}
		return okDev("userspace"), nil
	}
	return &calls
}

func TestOpenChoice(t *testing.T) {
	noGRE := errors.New(`create GRE device dmvpn0: operation not supported`)
	denied := errors.New("permission denied")
	noBPF := errors.New("ebpf: loading the BPF programs: operation not permitted\nverifier log line")
	tests := []struct {
		name            string
		kind            Kind
		kErr, uErr      error
		eErr            error
		wantCalls       string
		wantDev         string
		wantReason      string
		wantErrContains string
	}{
		{"auto prefers kernel", Auto, nil, nil, nil, "kernel", "kernel", "chosen by auto: the kernel creates GRE devices", ""},
		{"auto falls back to ebpf", Auto, noGRE, nil, nil, "kernel,ebpf", "ebpf", "ebpf (TC BPF fast path on a TUN), chosen by auto: kernel backend unavailable: create GRE device dmvpn0: operation not supported", ""},
		{"auto falls back", Auto, noGRE, nil, noBPF, "kernel,ebpf,userspace", "userspace", "kernel backend unavailable: create GRE device dmvpn0: operation not supported; ebpf backend unavailable: ebpf: loading the BPF programs: operation not permitted …", ""},
		{"auto all fail", Auto, noGRE, denied, noBPF, "kernel,ebpf,userspace", "", "", "kernel: create GRE device"},
		{"kernel only", Kernel, noGRE, nil, nil, "kernel", "", "", "backend kernel"},
		{"ebpf only", Ebpf, noGRE, nil, nil, "ebpf", "ebpf", "as configured", ""},
		{"ebpf fails", Ebpf, nil, nil, noBPF, "ebpf", "", "", "backend ebpf"},
		{"userspace only", Userspace, nil, nil, nil, "userspace", "userspace", "as configured", ""},
		{"unknown", Kind("xdp"), nil, nil, nil, "", "", "", "unknown data plane"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := fakes(t, tt.kErr, tt.uErr, tt.eErr)
			dev, reason, err := Open(gre.Config{Name: "dmvpn0", Key: 1}, tt.kind)
			if got := strings.Join(*calls, ","); got != tt.wantCalls {
				t.Errorf("calls %q, want %q", got, tt.wantCalls)
			}
			if tt.wantErrContains != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErrContains) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.wantErrContains)
				}
				if tt.name == "auto all fail" && (!errors.Is(err, denied) || !errors.Is(err, noBPF)) {
					t.Errorf("userspace error not wrapped: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if dev.Info().Name != tt.wantDev {
				t.Errorf("device %q, want %q", dev.Info().Name, tt.wantDev)
			}
			if !strings.Contains(reason, tt.wantReason) || strings.Contains(reason, "\n") {
				t.Errorf("reason %q, want one line containing %q", reason, tt.wantReason)
			}
		})
	}
}

func TestParseKind(t *testing.T) {
	for in, want := range map[string]Kind{"": Auto, "auto": Auto, "kernel": Kernel, "ebpf": Ebpf, "userspace": Userspace} {
		if got, err := ParseKind(in); err != nil || got != want {
			t.Errorf("ParseKind(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := ParseKind("xdp"); !errors.Is(err, ErrKind) {
		t.Errorf("ParseKind(xdp) = %v", err)
	}
}
func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
