package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/integration/vm"
	"github.com/opendmvpn/dmvpn/lab"
)

// envLabBins names the directory of dmvpnd, dmvpnctl and dmvpn-lab the
// host half built for the guest.
const envLabBins = "DMVPN_TEST_LAB_BINS"

// TestLabKernelInVM runs the lab on the production data plane, ip_gre, in
// a VM booted from Debian's kernel when this one lacks it: dmvpn-lab up
// --no-ipsec --dataplane kernel (the alpine topology), then the lab's BGP
// checks as in namespaces: sessions and routes with our protocol on every
// hub and spoke, every LAN reaching every LAN, the redirect shortcut
// (up's demonstration), a stopped spoke's purge withdrawing its routes
// from both hubs, hub1 lost → through hub2. Without IPsec: with a charon
// per node under TCG up alone outlasts two minutes; the rogue's refusal
// is the control plane's (the namespaces' TestLab), kernel ESP's identity
// checks TestKernelIPsecInVM's.
func TestLabKernelInVM(t *testing.T) {
	t.Parallel() // boots a VM: let it overlap the other VM tests
	if needVM(t) {
		cfg := vmConfig()
		cfg.Memory, cfg.Timeout = 1024, 10*time.Minute
		cfg.Env = append(os.Environ(), envLabBins+"="+buildLabCommands(t))
		startGuest(t, cfg).wait()
		return
	}
	needRoot(t, "ping", "nft", "pgrep")
	needKernelGRE(t)
	// Loaded up front: autoloaded one by one under TCG, the firewall's
	// first apply outlasts dmvpnd's start.
	for _, m := range []string{"esp4", "xfrm_user", "nf_conntrack_netlink", "nf_tables", "nft_ct", "nft_chain_nat",
		"nft_masq", "nft_nat", "nft_reject_inet", "nft_limit", "nft_log", "nft_xfrm", "nft_fib_inet", "nfnetlink_log"} {
		if out, err := exec.Command("modprobe", m).CombinedOutput(); err != nil {
			t.Fatalf("modprobe %s: %v: %s", m, err, out)
		}
	}
	if vm.InGuest() {
		// Under TCG every process start costs up to a second: the lab
		// waits longer for its daemons, convergence and demonstrations.
		os.Setenv(lab.EnvWaitScale, "6") // the guest runs this test alone
	}
	bin := os.Getenv(envLabBins)
	if !vm.InGuest() || bin == "" {
		bin = buildLabCommands(t)
	}
	l := &labEnv{bin: bin, dir: filepath.Join(t.TempDir(), "lab"), prefix: fmt.Sprintf("dmvk%d", os.Getpid())}
	t.Cleanup(func() {
		if out, err := l.run(t, "down"); err != nil {
			t.Logf("cleanup down: %v\n%s", err, out)
		}
	})
	start := time.Now()
	if vm.InGuest() {
		l.timeout = 6 * time.Minute
	}
	out, err := l.run(t, "up", "--no-ipsec", "--dataplane", "kernel")
	if err != nil {
		t.Fatalf("dmvpn-lab up --no-ipsec --dataplane kernel: %v\n%s", err, out)
	}
	t.Logf("up on the kernel data plane took %v; %s %s", time.Since(start).Round(time.Millisecond),
		firstLine(out, "Converged in"), firstLine(out, "BGP converged in"))
	for _, want := range []string{"(kernel data plane)", "BGP converged in", "Spoke-to-spoke traffic goes direct."} {
		if !strings.Contains(out, want) {
			t.Errorf("up output lacks %q", want)
		}
	}
	if t.Failed() {
		t.Fatalf("up output:\n%s", out)
	}
	t.Run("bgp", func(t *testing.T) { testLabBGP(t, l) })
	t.Run("stop", func(t *testing.T) { testLabStop(t, l) })
	t.Run("hub1 lost", func(t *testing.T) { testHubLost(t, l) })
}

// buildLabCommands builds dmvpnd, dmvpnctl and dmvpn-lab into a directory
// of the test's own.
func buildLabCommands(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/dmvpnd", "./cmd/dmvpnctl", "./cmd/dmvpn-lab")
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return dir
}
