package lab

import (
	"bytes"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/opendmvpn/dmvpn/daemon/config"
	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/ipsec"
)

func TestParseUp(t *testing.T) {
	for _, tc := range []struct {
		args []string
		topo string
		opts UpOptions
		ok   bool
	}{
		{nil, "", UpOptions{}, true},
		{[]string{"small"}, "small", UpOptions{}, true},
		{[]string{"--no-ipsec"}, "", UpOptions{NoIPsec: true}, true},
		{[]string{"--rogue", "small"}, "small", UpOptions{Rogue: true}, true},
		{[]string{"small", "--rogue"}, "small", UpOptions{Rogue: true}, true},
		{[]string{"--rogue", "--no-ipsec"}, "", UpOptions{}, false},
		{[]string{"small", "alpine"}, "", UpOptions{}, false},
		{[]string{"--bogus"}, "", UpOptions{}, false},
		{[]string{"--dataplane", "ebpf", "small"}, "small", UpOptions{Dataplane: "ebpf"}, true},
		{[]string{"--dataplane=userspace"}, "", UpOptions{}, true},
		{[]string{"--dataplane", "dpdk"}, "", UpOptions{}, false},
	} {
		topo, opts, ok := parseUp(tc.args, io.Discard)
		if ok != tc.ok || ok && (topo != tc.topo || opts != tc.opts) {
			t.Errorf("parseUp(%q) = %q, %+v, %v; want %q, %+v, %v", tc.args, topo, opts, ok, tc.topo, tc.opts, tc.ok)
		}
	}
}

func TestSubjects(t *testing.T) {
	top, err := FindTopology("")
	if err != nil {
		t.Fatal(err)
	}
	top = top.withRogue()
	got := map[string]string{}
	for _, n := range top.Nodes {
		got[n.Site.Name] = n.subject()
	}
	want := map[string]string{
		"hub1":   "C=FI, O=dmvpn-lab, OU=GRE=172.16.0.1, OU=AS=65000, CN=hub1",
		"hub2":   "C=FI, O=dmvpn-lab, OU=GRE=172.16.0.2, OU=AS=65000, CN=hub2",
		"spoke1": "C=FI, O=dmvpn-lab, OU=GRE=172.16.1.1, OU=AS=65001, OU=NET=10.1.0.0/24, CN=spoke1",
		"spoke2": "C=FI, O=dmvpn-lab, OU=GRE=172.16.2.1, OU=AS=65002, OU=NET=10.2.0.0/24, CN=spoke2",
		"spoke3": "C=FI, O=dmvpn-lab, OU=GRE=172.16.3.1, OU=AS=65003, OU=NET=10.3.0.0/24, CN=spoke3",
		"rogue":  "C=FI, O=dmvpn-lab, OU=GRE=172.16.1.1, OU=AS=65099, OU=NET=10.4.0.0/24, CN=rogue",
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("subjects (-want +got):\n%s", d)
	}
	if n := len(top.spokes()); n != 3 {
		t.Errorf("%d legitimate spokes with the rogue, want 3", n)
	}
}

// TestConfigs writes the PKI and checks that every node's generated file
// is a configuration dmvpnd accepts, with IPsec and without.
func TestConfigs(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"alpine", "small"} {
		top, err := FindTopology(name)
		if err != nil {
			t.Fatal(err)
		}
		top = top.withRogue()
		creds, err := writePKI(filepath.Join(dir, name), top)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range top.Nodes {
			c := creds[n.Site.Name]
			if st, err := os.Stat(c.Key); err != nil || st.Mode().Perm() != 0o600 {
				t.Errorf("%s: key %s: %v %v", n.Site.Name, c.Key, st.Mode(), err)
			}
			section := ipsecSection(c, "userspace", filepath.Join(dir, name, n.Site.Name, "ipsec"), filepath.Join(dir, name, n.Site.Name, "audit.jsonl"))
			for _, sec := range []string{section, ""} {
				text := top.config(n, filepath.Join(dir, "s.sock"), sec)
				// The rogue's certificate names another address: its
				// dmvpnd runs with --unchecked-credentials.
				cfg, err := config.ParseWith([]byte(text), n.Site.Name, config.Options{UncheckedCredentials: n.Rogue()})
				if err != nil {
					t.Errorf("%s/%s: %v\n%s", name, n.Site.Name, err, text)
					continue
				}
				if (cfg.IPsec != nil) != (sec != "") {
					t.Errorf("%s/%s: ipsec section %v, want %v", name, n.Site.Name, cfg.IPsec != nil, sec != "")
				}
				if fw := cfg.Firewall; fw == nil || len(fw.Internet) != 1 || fw.Internet[0] != "wan0" || (len(fw.LAN) == 1) != n.Site.LAN.IsValid() {
					t.Errorf("%s/%s: firewall section %+v", name, n.Site.Name, fw)
				}
			}
		}
	}
}

func TestPrintSAs(t *testing.T) {
	now := time.Now()
	r := control.CryptoResponse{Enabled: true, SAs: []ipsec.SA{
		{State: "ESTABLISHED", RemoteHost: netip.MustParseAddr("198.51.100.17"), RemotePort: 4500, RemoteID: "CN=spoke2", Established: now.Add(-time.Minute),
			Children: []ipsec.ChildSA{{State: "INSTALLED"}}},
		{State: "CONNECTING", RemoteHost: netip.MustParseAddr("198.51.100.1"), RemoteID: "CN=spoke1"},
	}}
	var b bytes.Buffer
	printSAs(&b, "hub1", r)
	want := "hub1: 2 IPsec SAs, 1 up (GET /v1/crypto)\n" +
		"  PEER                  STATE        UP       PEER CERTIFICATE\n" +
		"  198.51.100.1          CONNECTING   -        CN=spoke1\n" +
		"  198.51.100.17:4500    ESTABLISHED  1m0s     CN=spoke2\n"
	if d := cmp.Diff(want, b.String()); d != "" {
		t.Errorf("printSAs (-want +got):\n%s", d)
	}
}
