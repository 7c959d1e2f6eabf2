package lab

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opendmvpn/dmvpn/bgp"
)

// TestSessionsDown: a failed BGP convergence names each session that is
// not up by node, with its state and last error, and shows the log of the
// node at the other end.
func TestSessionsDown(t *testing.T) {
	top, err := FindTopology("alpine")
	if err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(t.TempDir(), "spoke1.log")
	if err := os.WriteFile(log, []byte("first\nspoke1 was here\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	st := &State{Nodes: []NodeState{{Name: "spoke1", Daemon: &DaemonState{Log: log}}}}
	var down []bgp.NeighborStatus
	for _, n := range top.Nodes {
		if n.Site.Name == "spoke1" || n.Site.Name == "hub2" {
			nb := bgp.NeighborStatus{}
			nb.Address, nb.AS, nb.State = n.Tunnel.Addr(), n.AS, bgp.StateOpenConfirm
			down = append(down, nb)
		}
	}
	down[1].LastError = "hold timer expired"
	got := top.sessionsDown(st, down)
	for _, want := range []string{
		"session with hub2 (172.16.0.2, AS 65000): openconfirm",
		"session with spoke1 (172.16.1.1, AS 65001): openconfirm, last down: hold timer expired\n  spoke1's log:\n  first\n  spoke1 was here",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("sessionsDown lacks %q:\n%s", want, got)
		}
	}
}
