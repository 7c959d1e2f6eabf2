package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/ctl/nhrpcap"
	"github.com/opendmvpn/dmvpn/integration/vm"
	"github.com/opendmvpn/dmvpn/internal/tsharktest"
	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// A test that needs ip_gre runs in two halves when this kernel lacks it:
// the host half boots a VM and runs the same test binary there, limited to
// the same test (vm.RunTest); the guest half is the test's body. The host
// half builds what the guest runs and hands it over in the environment,
// and checks the captures the guest leaves in a shared directory (tshark
// is slow to start under TCG).
const (
	// envBins names the directory holding dmvpnd built by the host half.
	envBins = "DMVPN_TEST_BINS"
	// envOut names a directory shared with the host: captures to check.
	envOut = "DMVPN_TEST_OUT"
)

// vmConfig is the VM the interoperation and end-to-end tests run in: two
// CPUs (the daemons run in parallel) and room for a dozen processes.
func vmConfig() vm.Config {
	return vm.Config{Timeout: 4 * time.Minute, Memory: 768, CPUs: 2}
}

// runGuestWithGREInject runs t's guest half in a VM (vmConfig), with
// greinject built by this host half for it (envGREInject).
func runGuestWithGREInject(t *testing.T) {
	t.Helper()
	cfg := vmConfig()
	cfg.Env = append(os.Environ(), envGREInject+"="+vm.GoBuild(t, "./integration/cmd/greinject"))
	startGuest(t, cfg).wait()
}

// modprobe loads kernel modules, failing t if one does not load.
func modprobe(t testing.TB, mods ...string) {
	t.Helper()
	for _, m := range mods {
		if out, err := exec.Command("modprobe", m).CombinedOutput(); err != nil {
			t.Fatalf("modprobe %s: %v: %s", m, err, out)
		}
	}
}

// guestRun is a VM running one test's guest half.
type guestRun struct {
	t     *testing.T
	name  string
	out   string
	start time.Time
	done  chan struct{}
	res   *vm.Result
	err   error
}

// needVM reports whether t must run in a VM: false in the guest (the body
// runs) and on a kernel with ip_gre (the body runs natively).
func needVM(t *testing.T) bool {
	t.Helper()
	if vm.InGuest() {
		return false
	}
	needRoot(t)
	return !greAvailable(t)
}

// startGuest boots a VM that runs t's guest half with cfg, in the
// background; wait collects it. The host half may meanwhile drive what
// lives on the host (a node behind a TAP).
func startGuest(t *testing.T, cfg vm.Config) *guestRun {
	t.Helper()
	img := vm.Require(t)
	bin := buildDmvpnd(t)
	g := &guestRun{t: t, name: t.Name(), out: t.TempDir(), done: make(chan struct{}), start: time.Now()}
	if cfg.Env == nil {
		cfg.Env = os.Environ()
	}
	cfg.Env = append(cfg.Env, envBins+"="+filepath.Dir(bin), envOut+"="+g.out)
	cfg.Shares = append(cfg.Shares, g.out)
	argv := vm.TestCommand(t)
	// The VM may wait for a slot while other tests' VMs run.
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout+20*time.Minute)
	go func() {
		defer close(g.done)
		defer cancel()
		g.res, g.err = img.Run(ctx, cfg, argv...)
	}()
	// The VM never outlives the test: a test that failed before waiting
	// for it (its host half) stops it.
	t.Cleanup(func() {
		if t.Failed() {
			cancel()
		}
		<-g.done
	})
	return g
}

// wait waits for the guest half and fails t unless it passed there (like
// vm.RunTest), then checks the captures it left.
func (g *guestRun) wait() *vm.Result {
	t := g.t
	t.Helper()
	<-g.done
	if g.res != nil {
		t.Logf("guest (waited %v for a VM slot, boot %v, total %v, exit %d):\n%s", g.res.Queued.Round(time.Millisecond),
			g.res.Boot.Round(time.Millisecond), g.res.Elapsed.Round(time.Millisecond), g.res.ExitCode, g.res.Output)
	}
	if g.err != nil {
		t.Fatalf("VM run of %s: %v", g.name, g.err)
	}
	if g.res.ExitCode != 0 || !bytes.Contains(g.res.Output, []byte("--- PASS: "+g.name+" ")) {
		t.Fatalf("%s did not pass in the guest (exit status %d)", g.name, g.res.ExitCode)
	}
	checkGuestCaptures(t, g.out)
	return g.res
}

// runInVM runs t's guest half in a VM and waits for it, when t needs one
// (needVM); it reports whether it did, and the caller then returns.
func runInVM(t *testing.T, cfg vm.Config) bool {
	t.Helper()
	if !needVM(t) {
		return false
	}
	startGuest(t, cfg).wait()
	return true
}

// guestDmvpnd returns dmvpnd as the host half built it, in the guest.
func guestDmvpnd(t testing.TB) (string, bool) {
	t.Helper()
	if !vm.InGuest() {
		return "", false
	}
	dir := os.Getenv(envBins)
	if dir == "" {
		t.Fatalf("in the guest without $%s: the host half hands the binaries over", envBins)
	}
	return filepath.Join(dir, "dmvpnd"), true
}

// captureCheck is what a capture must show: the NHRP packet types that
// must appear, and those FRR must have sent (from its nodes' NBMA
// addresses).
type captureCheck struct {
	Name  string   `json:"name"`
	Types []string `json:"types"`
	// FRR lists the NBMA addresses of FRR's nodes, FRRTypes the packet
	// types (wire.Type numbers) they must have sent.
	FRR      []netip.Addr `json:"frr,omitempty"`
	FRRTypes []wire.Type  `json:"frr_types,omitempty"`
}

// envSaveFRR names a directory where the host half saves FRR's NHRP
// packets of each interoperation capture: a pcap of them and the list of
// their PDUs, the codec's test data (nhrp/wire/testdata/captures).
const envSaveFRR = "DMVPN_SAVE_FRR_CAPTURES"

// checkCapture requires every NHRP packet of a capture to dissect cleanly
// in tshark, the types listed to appear, and every packet to decode and
// re-encode byte for byte with our codec. In the guest it only hands the
// capture to the host half, which checks it after the run.
func checkCapture(t *testing.T, path string, c captureCheck) {
	t.Helper()
	if vm.InGuest() {
		out := os.Getenv(envOut)
		if out == "" {
			t.Fatalf("in the guest without $%s", envOut)
		}
		b, err := os.ReadFile(path)
		if err == nil {
			err = os.WriteFile(filepath.Join(out, c.Name+".pcap"), b, 0o644)
		}
		if err == nil {
			var j []byte
			j, err = json.Marshal(c)
			if err == nil {
				err = os.WriteFile(filepath.Join(out, c.Name+".json"), j, 0o644)
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		return
	}
	checkCaptureNow(t, path, c)
}

// checkGuestCaptures checks the captures a guest half left in dir.
func checkGuestCaptures(t *testing.T, dir string) {
	t.Helper()
	specs, _ := filepath.Glob(filepath.Join(dir, "*.json"))
	for _, s := range specs {
		b, err := os.ReadFile(s)
		if err != nil {
			t.Fatal(err)
		}
		var c captureCheck
		if err := json.Unmarshal(b, &c); err != nil {
			t.Fatal(err)
		}
		checkCaptureNow(t, strings.TrimSuffix(s, ".json")+".pcap", c)
	}
}

var tsharkMu sync.Mutex // one tshark at a time: it is CPU-hungry

func checkCaptureNow(t *testing.T, path string, c captureCheck) {
	t.Helper()
	n, fromFRR := roundTripCapture(t, path, c)
	for _, ty := range c.FRRTypes {
		if fromFRR[ty] == 0 {
			t.Errorf("%s: FRR sent no %v (sent %v)", c.Name, ty, fromFRR)
		}
	}
	if len(c.FRR) > 0 {
		t.Logf("%s: FRR's packets, by type: %v", c.Name, fromFRR)
		if dir := os.Getenv(envSaveFRR); dir != "" {
			saveFRRPackets(t, path, dir, c)
		}
	}
	tsharkMu.Lock()
	probs, types, err := tsharktest.CheckNHRP(path, nil)
	tsharkMu.Unlock()
	if errors.Is(err, tsharktest.ErrNoTshark) {
		t.Fatal(err) // make test installs it
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range probs {
		t.Errorf("%s: tshark frame %s: %s", c.Name, p.Frame, p.Detail)
	}
	if len(types) != n {
		t.Errorf("%s: tshark found %d NHRP packets, the codec %d", c.Name, len(types), n)
	}
	seen := map[string]int{}
	for _, ty := range types {
		seen[ty]++
	}
	for _, want := range c.Types {
		if seen[want] == 0 {
			t.Errorf("%s: no NHRP packet of type %s captured (saw %v)", c.Name, want, seen)
		}
	}
	t.Logf("%s: tshark dissected %d NHRP packets cleanly, the codec re-encoded each byte for byte; by type: %v", c.Name, len(types), seen)
}

// roundTripCapture decodes every NHRP packet of a capture with our codec
// and requires the re-encoding to be identical, byte for byte: ours, and
// those of the other implementations (FRR). It returns the packet count,
// and the types of the packets FRR's nodes sent (each counted once: the
// capture on all interfaces of a router sees a packet in and out).
func roundTripCapture(t *testing.T, path string, c captureCheck) (int, map[wire.Type]int) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fromFRR := map[wire.Type]int{}
	seen := map[string]bool{}
	st, err := nhrpcap.Scan(f, func(fr *nhrpcap.Frame) error {
		p, err := wire.Decode(fr.NHRP)
		if err != nil {
			t.Errorf("%s: frame %d (%s → %s) does not decode: %v", c.Name, fr.Number, fr.OuterSrc, fr.OuterDst, err)
			return nil
		}
		b, err := p.AppendBinary(nil)
		if err != nil || !bytes.Equal(b, fr.NHRP) {
			t.Errorf("%s: frame %d (%s → %s) re-encodes differently (%v)\n got %x\nwant %x", c.Name, fr.Number, fr.OuterSrc, fr.OuterDst, err, b, fr.NHRP)
		}
		key := fr.OuterSrc.String() + fr.OuterDst.String() + string(fr.NHRP)
		if slices.Contains(c.FRR, fr.OuterSrc) && !seen[key] {
			seen[key] = true
			fromFRR[p.Type]++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return st.NHRP, fromFRR
}

// saveFRRPackets writes FRR's NHRP packets of a capture to dir: the frames
// themselves (tcpdump keeps each once, as it entered the router) and their
// PDUs, listed as the codec's capture tests read them.
func saveFRRPackets(t *testing.T, path, dir string, c captureCheck) {
	t.Helper()
	name := "frr__" + c.Name + ".pcap"
	out := filepath.Join(dir, name)
	var src []string
	for _, a := range c.FRR {
		src = append(src, "ip src "+a.String())
	}
	filter := "inbound and ip proto 47 and ip[22:2] = 0x2001 and (" + strings.Join(src, " or ") + ")"
	if b, err := exec.Command("tcpdump", "-r", path, "-w", out, filter).CombinedOutput(); err != nil {
		t.Fatalf("tcpdump: %v: %s", err, b)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var list strings.Builder
	fmt.Fprintf(&list, "##### %s: the NHRP packets FRR %s sent in %s (TestFRRInterop)\n", name, frrVersion(), c.Name)
	if _, err := nhrpcap.Scan(f, func(fr *nhrpcap.Frame) error {
		summary := "undecodable"
		if p, err := wire.Decode(fr.NHRP); err == nil {
			summary = p.Summary()
		}
		fmt.Fprintf(&list, "# %s -> %s: %s\nframe %d: %x\n", fr.OuterSrc, fr.OuterDst, summary, fr.Number, fr.NHRP)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(out+".nhrp-pdus.txt", []byte(list.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: FRR's packets saved to %s", c.Name, out)
}
