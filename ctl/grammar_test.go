package ctl

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestExpand(t *testing.T) {
	root := NewRoot(Options{Socket: "/nonexistent"})
	tests := []struct {
		in      string
		want    string
		wantErr error
	}{
		{"sh ip nh", "show ip nhrp", nil},
		{"sh dm det j", "show dmvpn detail json", nil},
		{"s i n c d", "show ip nhrp cache detail", nil},
		{"sh ip nhrp sh", "show ip nhrp shortcut", nil},
		{"sh ip nhrp tr js", "show ip nhrp traffic json", nil},
		{"sh run", "show running-config", nil},
		{"sh ver json", "show version json", nil},
		{"cl ip nh peer 10.0.0.1", "clear ip nhrp peer 10.0.0.1", nil},
		{"cl i n dyn", "clear ip nhrp dynamic", nil},
		{"deb nh pack", "debug nhrp packets", nil},
		{"dec /tmp/x.pcap --text", "decode /tmp/x.pcap --text", nil},
		{"--socket /x sh dm", "--socket /x show dmvpn", nil},
		{"d", "", ErrAmbiguous}, // debug, decode
		{"sh ip nhrp s", "show ip nhrp shortcut", nil},
		{"sh foo", "", ErrUnknown},
		{"sh cr sa", "show crypto sa", nil},
		{"sh cry sa j", "show crypto sa json", nil},
		{"sh cr ik sa", "show crypto ikev2 sa", nil},
		{"sh cr ips s js", "show crypto ipsec sa json", nil},
		{"sh cr i sa", "", ErrAmbiguous}, // ikev2, ipsec
		{"cl cr sa 192.0.2.1", "clear crypto sa 192.0.2.1", nil},
		{"cl c s 192.0.2.1", "clear crypto sa 192.0.2.1", nil},

		{"sh ip nhrp cache x", "", ErrUnknown},
		{"sh ip b", "show ip bgp", nil},
		{"sh ip bgp su", "show ip bgp summary", nil},
		{"sh ip bgp su j", "show ip bgp summary json", nil},
		{"sh ip bgp 10.1.0.0/24", "show ip bgp 10.1.0.0/24", nil},
		{"sh ip bgp 10.1.0.0/24 j", "show ip bgp 10.1.0.0/24 json", nil},
		{"sh ip bgp 10.1.0.0/24 summary", "", ErrUnknown},
		{"sh ip bgp 10.1.0.0/24 10.2.0.0/24", "", ErrUnknown},
		{"sh ip bgp nei", "show ip bgp neighbors", nil},
		{"sh ip bgp nei 172.16.1.1 rec", "show ip bgp neighbors 172.16.1.1 received-routes", nil},
		{"sh ip bgp nei 172.16.1.1 ad js", "show ip bgp neighbors 172.16.1.1 advertised-routes json", nil},
		{"cl ip bgp *", "clear ip bgp *", nil},
		{"cl ip bgp 172.16.1.1 soft", "clear ip bgp 172.16.1.1 soft", nil},
	}
	for _, tt := range tests {
		got, err := Expand(root, strings.Fields(tt.in))
		if !errors.Is(err, tt.wantErr) {
			t.Errorf("Expand(%q): error %v, want %v", tt.in, err, tt.wantErr)
			continue
		}
		if err == nil && strings.Join(got, " ") != tt.want {
			t.Errorf("Expand(%q) = %q, want %q", tt.in, strings.Join(got, " "), tt.want)
		}
	}
	_, err := Expand(root, []string{"d"})
	if err == nil || err.Error() != `ambiguous command "d": could be debug, decode` {
		t.Errorf("ambiguous error: %v", err)
	}
}

func words(items []Item) []string {
	var out []string
	for _, it := range items {
		out = append(out, it.Word)
	}
	return out
}

func TestCandidates(t *testing.T) {
	root := NewRoot(Options{Socket: "/nonexistent", Interactive: true})
	tests := []struct {
		line string
		want []string
	}{
		{"", []string{"clear", "debug", "decode", "exit", "firewall", "quit", "reload", "show"}},
		{"sh", []string{"show"}},
		{"show ", []string{"crypto", "dmvpn", "firewall", "ip", "running-config", "uplinks", "version"}},
		{"sh fi ", []string{"json", "<cr>", "|"}},
		{"firewall ", []string{"apply", "confirm", "translate"}},
		{"fi tr ", []string{"running", "<cr>"}},
		{"show crypto ", []string{"ikev2", "ipsec", "sa"}},
		{"sh cr sa ", []string{"json", "<cr>", "|"}},
		{"sh cr ikev2 ", []string{"sa"}},
		{"sh cr ipsec sa ", []string{"json", "<cr>", "|"}},
		{"clear ", []string{"crypto", "ip"}},
		{"clear crypto sa ", []string{"<PEER>"}},
		{"clear crypto sa 192.0.2.1 ", []string{"<cr>"}},
		{"sh ip nh ", []string{"cache", "nhs", "shortcut", "traffic", "detail", "json", "<cr>", "|"}},
		{"sh ip nhrp detail ", []string{"cache", "nhs", "shortcut", "traffic", "json", "<cr>", "|"}},
		{"sh dmvpn d", []string{"detail"}},
		{"show ip nhrp traffic ", []string{"json", "<cr>", "|"}},
		{"sh dmvpn |", []string{"|"}},
		{"sh dmvpn | ", []string{"begin", "count", "exclude", "include"}},
		{"sh dmvpn | in", []string{"include"}},
		{"sh dmvpn | include ", []string{"<REGEX>"}},
		{"sh dmvpn | count ", []string{"<REGEX>", "<cr>"}},
		{"sh dmvpn | include 10.0 ", []string{"<cr>"}},
		{"clear ip nhrp ", []string{"dynamic", "peer", "shortcut", "<cr>"}},
		{"clear ip nhrp peer ", []string{"<ADDRESS>"}},
		{"clear ip nhrp peer 10.0.0.1 ", []string{"<cr>"}},
		{"decode ", []string{"<FILE>"}},
		{"reload ", []string{"json", "<cr>"}},
	}
	for _, tt := range tests {
		w, p := SplitLine(tt.line)
		items, err := Candidates(root, w, p)
		if err != nil {
			t.Errorf("%q: %v", tt.line, err)
			continue
		}
		if diff := cmp.Diff(tt.want, words(items)); diff != "" {
			t.Errorf("candidates after %q (-want +got):\n%s", tt.line, diff)
		}
	}
	if _, err := Candidates(root, []string{"d"}, ""); !errors.Is(err, ErrAmbiguous) {
		t.Errorf("candidates after an ambiguous word: %v", err)
	}
}

func TestHelpText(t *testing.T) {
	got := HelpText([]Item{{"dmvpn", "DMVPN peers"}, {"running-config", "Current configuration"}, {"<cr>", ""}})
	want := "  dmvpn           DMVPN peers\n  running-config  Current configuration\n  <cr>"
	if got != want {
		t.Errorf("got\n%q\nwant\n%q", got, want)
	}
}

func TestUnreachable(t *testing.T) {
	out, errb, code := runCtl(t, "--socket", "/nonexistent/dmvpnd.sock", "sh", "dmvpn")
	want := "% cannot reach dmvpnd at /nonexistent/dmvpnd.sock: connect: no such file or directory\n"
	if code != 1 || out != "" || errb != want {
		t.Errorf("exit %d, stdout %q, stderr %q; want stderr %q", code, out, errb, want)
	}
	_, errb, code = runCtl(t, "--socket", "/nonexistent/dmvpnd.sock", "sh", "bogus")
	if code != 1 || errb != "% unknown command \"bogus\" after \"show\"\n" {
		t.Errorf("unknown command: exit %d, stderr %q", code, errb)
	}
}
