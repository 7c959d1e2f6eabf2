package testbed

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

func need(t *testing.T) {
	t.Helper()
	SkipUnavailable(t, "ping", "nft", "tcpdump")
}

func namespaces(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func TestValidate(t *testing.T) {
	p := netip.MustParsePrefix
	bad := map[string]Spec{
		"long name":    {Sites: []Site{{Name: "averylongname", NBMA: p("192.0.2.1/24")}}},
		"upper case":   {Sites: []Site{{Name: "Hub", NBMA: p("192.0.2.1/24")}}},
		"duplicate":    {Sites: []Site{{Name: "a", NBMA: p("192.0.2.1/24")}, {Name: "a", NBMA: p("198.51.100.1/24")}}},
		"reserved":     {Sites: []Site{{Name: "inet", NBMA: p("192.0.2.1/24")}}},
		"public NBMA":  {Sites: []Site{{Name: "a", NBMA: p("8.8.8.8/24")}}},
		"public LAN":   {Sites: []Site{{Name: "a", NBMA: p("192.0.2.1/24"), LAN: p("192.168.1.1/24"), Hosts: 1}}},
		"hosts no LAN": {Sites: []Site{{Name: "a", NBMA: p("192.0.2.1/24"), Hosts: 1}}},
	}
	for name, spec := range bad {
		if err := spec.validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if lastHost(p("192.0.2.1/24")) != netip.MustParseAddr("192.0.2.254") || nthHost(p("10.1.0.1/24"), 2) != p("10.1.0.3/24") {
		t.Error("address helpers")
	}
	if pid, ok := ownerPid("dmvt123x0a0b0c-inet"); !ok || pid != 123 {
		t.Errorf("ownerPid = %d %v", pid, ok)
	}
	if _, ok := ownerPid("other-ns"); ok {
		t.Error("ownerPid accepted a foreign namespace")
	}
}

// TestBuildRunClose builds a hub, a spoke with two LAN hosts and a spoke
// behind NAT, checks the routing, runs a process, and checks that Close
// leaves nothing behind.
func TestBuildRunClose(t *testing.T) {
	need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	spec := Spec{Sites: []Site{
		{Name: "hub", Kind: Hub, NBMA: netip.MustParsePrefix("192.0.2.1/24")},
		{Name: "spa", Kind: Spoke, NBMA: netip.MustParsePrefix("198.51.100.1/24"), LAN: netip.MustParsePrefix("10.1.0.1/24"), Hosts: 2},
		{Name: "spb", Kind: Spoke, NBMA: netip.MustParsePrefix("203.0.113.1/24"), NAT: true},
	}}
	tb, err := New(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			tb.Close()
		}
	}()
	names := []string{"inet", "hub", "spa", "spa-h1", "spa-h2", "spb", "spb-nat"}
	for _, n := range names {
		if tb.Node(n) == nil {
			t.Fatalf("no node %s", n)
		}
	}
	if got := tb.Node("spa-h2").Addr; got != netip.MustParseAddr("10.1.0.3") {
		t.Errorf("spa-h2 address %s", got)
	}
	// a LAN host reaches its site, sites reach each other through the internet
	if out, err := tb.Node("spa-h2").Run(ctx, "ping", "-c", "1", "-W", "2", "10.1.0.1"); err != nil {
		t.Fatalf("LAN: %v\n%s", err, out)
	}
	if out, err := tb.Node("hub").Run(ctx, "ping", "-c", "1", "-W", "2", "198.51.100.1"); err != nil {
		t.Fatalf("internet: %v\n%s", err, out)
	}
	// the spoke behind NAT reaches the hub and appears with the NAT's address
	dump, err := tb.Node("hub").Start(ProcSpec{Name: "tcpdump", Args: []string{"tcpdump", "-n", "-l", "-i", "wan0", "icmp"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := dump.WaitFor(ctx, regexp.MustCompile("listening on"), 0); err != nil {
		t.Fatal(err)
	}
	if out, err := tb.Node("spb").Run(ctx, "ping", "-c", "1", "-W", "2", "192.0.2.1"); err != nil {
		t.Fatalf("through NAT: %v\n%s", err, out)
	}
	if _, _, err := dump.WaitFor(ctx, regexp.MustCompile(`IP 203\.0\.113\.1 > 192\.0\.2\.1: ICMP echo request`), 0); err != nil {
		t.Fatalf("hub did not see the NAT's address: %v", err)
	}
	// a long-running process and its output
	p, err := tb.Node("spa").Start(ProcSpec{Name: "sleeper", Args: []string{"sh", "-c", "echo started; exec sleep 600"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := p.WaitFor(ctx, regexp.MustCompile("^started$"), 0); err != nil {
		t.Fatal(err)
	}
	pid := p.Pid()
	if err := tb.Close(); err != nil {
		t.Fatal(err)
	}
	closed = true
	select {
	case <-p.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("process still running after Close")
	}
	if syscall.Kill(pid, 0) == nil {
		t.Fatalf("pid %d alive after Close", pid)
	}
	if ns := namespaces(t); strings.Contains(ns, tb.Prefix) {
		t.Fatalf("namespaces left behind:\n%s", ns)
	}
	// a second run right after works
	tb2, err := New(ctx, Spec{Sites: spec.Sites[:1]})
	if err != nil {
		t.Fatalf("second run: %v", err)
	}
	if err := tb2.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestSweep removes what a killed run left behind: its namespaces and the
// processes in them.
func TestSweep(t *testing.T) {
	need(t)
	dead := 0
	for pid := 4000000; pid < 4000100; pid++ {
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			dead = pid
			break
		}
	}
	if dead == 0 {
		t.Skip("skipping: found no unused pid")
	}
	ns := fmt.Sprintf("%s%dx00beef-inet", NamePrefix, dead)
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	defer exec.Command("ip", "netns", "del", ns).Run()
	cmd := exec.Command("ip", "netns", "exec", ns, "sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	// a namespace of a live run is kept
	live := fmt.Sprintf("%s%dx00beef-inet", NamePrefix, os.Getppid())
	exec.Command("ip", "netns", "add", live).Run()
	defer exec.Command("ip", "netns", "del", live).Run()
	if err := Sweep(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		t.Fatal("process in a stale namespace survived the sweep")
	}
	list := namespaces(t)
	if strings.Contains(list, ns) {
		t.Fatal("stale namespace survived the sweep")
	}
	if !strings.Contains(list, live) {
		t.Fatal("the sweep removed a live run's namespace")
	}
}
