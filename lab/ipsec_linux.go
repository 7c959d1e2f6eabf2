//go:build linux

package lab

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/opendmvpn/dmvpn/ctl"
	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/ipsec"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// charonAvailable says what to install when the lab cannot run IPsec:
// charon and every plugin its managed charon loads in the mode ("kernel"
// or "userspace"), each named with its package (ipsec.CheckInstalled).
func charonAvailable(mode string) error {
	m := ipsec.ModeUserspace
	if mode == "kernel" {
		m = ipsec.ModeKernel
	}
	if err := ipsec.CheckInstalled(ipsec.DefaultCharon, m); err != nil {
		return fmt.Errorf("%w (scripts/install-deps.sh --lab installs what the lab needs), "+
			"or build the lab without IPsec: dmvpn-lab up --no-ipsec", err)
	}
	return nil
}

// ipsecWord is how status and up describe the lab's IPsec.
func (s *State) ipsecWord() string {
	if s.IPsec {
		return "IPsec on"
	}
	return "IPsec off"
}

// printPKI lists the certificates up made.
func (l *Lab) printPKI(t Topology, st *State) {
	fmt.Fprintf(l.Out, "IPsec on every hub and spoke: a CA (%s) and a certificate per node in %s (keys mode 0600):\n", caDN, st.PKI)
	for _, n := range t.Nodes {
		note := ""
		if n.Rogue() {
			note = fmt.Sprintf("   ← names %s's tunnel address; its own is %s", t.owner(n.Claims), n.Tunnel.Addr())
		}
		fmt.Fprintf(l.Out, "  %-7s %s%s\n", n.Site.Name, n.subject(), note)
	}
}

// owner is the name of the node whose tunnel address a is.
func (t Topology) owner(a netip.Addr) string {
	for _, n := range t.Nodes {
		if n.Tunnel.Addr() == a {
			return n.Site.Name
		}
	}
	return a.String()
}

// crypto returns a node's IPsec state.
func crypto(ctx context.Context, socket string) (control.CryptoResponse, error) {
	var r control.CryptoResponse
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := control.NewClient(socket).Get(cctx, control.PathCrypto, &r)
	return r, err
}

// saUpWith reports whether an SA with a peer is established.
func saUpWith(r control.CryptoResponse, peer netip.Addr) bool {
	for _, sa := range r.SAs {
		if sa.RemoteHost == peer && sa.Up() {
			return true
		}
	}
	return false
}

// showSAs prints a node's IPsec SAs: dmvpnctl's show crypto sa where the
// shell has it, else a table made from GET /v1/crypto.
func (l *Lab) showSAs(ctx context.Context, name, socket string) error {
	if _, err := ctl.Expand(ctl.NewRoot(ctl.Options{}), []string{"show", "crypto", "sa"}); err == nil {
		fmt.Fprintf(l.Out, "%s# show crypto sa\n", name)
		var out, errb bytes.Buffer
		if ctl.Run(ctx, []string{"--socket", socket, "show", "crypto", "sa"}, strings.NewReader(""), &out, &errb, nil) == 0 {
			_, _ = l.Out.Write(out.Bytes())
			return nil
		}
		fmt.Fprintf(l.Out, "(show crypto sa: %s)\n", strings.TrimSpace(errb.String()))
	}
	r, err := crypto(ctx, socket)
	if err != nil {
		return fmt.Errorf("%s: IPsec state: %w", name, err)
	}
	printSAs(l.Out, name, r)
	return nil
}

// showIPsec prints the first hub's SAs, how many the others have, and the
// certificate identity of every registration at every hub, and checks
// that each spoke's binding came with its own certificate.
func (l *Lab) showIPsec(ctx context.Context, t Topology, st *State) error {
	fmt.Fprintf(l.Out, "\n======== IPsec: SAs and the certificate of every registration ========\n")
	for i, h := range t.hubs() {
		hs, _ := st.node(h.Site.Name)
		if i == 0 {
			if err := l.showSAs(ctx, h.Site.Name, hs.Daemon.Socket); err != nil {
				return err
			}
			continue
		}
		r, err := crypto(ctx, hs.Daemon.Socket)
		if err != nil {
			return fmt.Errorf("%s: IPsec state: %w", h.Site.Name, err)
		}
		up := 0
		for _, sa := range r.SAs {
			if sa.Up() {
				up++
			}
		}
		fmt.Fprintf(l.Out, "%s: %d IPsec SAs up (show crypto sa on %s lists them)\n", h.Site.Name, up, h.Site.Name)
	}
	var errs []error
	for _, h := range t.hubs() {
		hs, _ := st.node(h.Site.Name)
		var r control.CacheResponse
		if err := control.NewClient(hs.Daemon.Socket).Get(ctx, control.PathCache, &r); err != nil {
			return err
		}
		fmt.Fprintf(l.Out, "\n%s: each registration and the certificate it was authorised by (%s# show ip nhrp detail)\n", h.Site.Name, h.Site.Name)
		for _, s := range t.spokes() {
			e, ok := entryFor(r, s.Tunnel.Addr())
			switch {
			case !ok:
				errs = append(errs, fmt.Errorf("%s has no registration of %s", h.Site.Name, s.Site.Name))
			case !slices.Contains(e.Attrs["GRE"], s.Tunnel.Addr().String()) || !strings.Contains(e.Identity, "CN="+s.Site.Name):
				errs = append(errs, fmt.Errorf("%s's registration at %s came without its certificate: identity %q", s.Site.Name, h.Site.Name, e.Identity))
			}
			if ok {
				fmt.Fprintf(l.Out, "  %-15s via %-15s %s\n", e.Proto, e.NBMA, e.Identity)
			}
		}
	}
	return errors.Join(errs...)
}

// entryFor returns the registration (dynamic entry) of a tunnel address.
func entryFor(r control.CacheResponse, a netip.Addr) (nhrp.CacheEntry, bool) {
	for _, e := range r.Entries {
		if e.Type == nhrp.TypeDynamic && e.Proto.Contains(a) {
			return e, true
		}
	}
	return nhrp.CacheEntry{}, false
}

// auditRecord is a line of the registration audit log.
type auditRecord struct {
	Event  string `json:"event"`
	NBMA   string `json:"nbma"`
	Tunnel string `json:"tunnel_address"`
	Kind   string `json:"kind"`
	Reason string `json:"reason"`
}

// refusal returns the first "registration refused" line of an audit log
// for an NBMA address.
func refusal(path string, nbma netip.Addr) (string, bool) {
	f, err := os.Open(path)
	if err != nil {
		return "", false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var a auditRecord
		if json.Unmarshal(sc.Bytes(), &a) == nil && a.Event == "registration refused" && a.NBMA == nbma.String() {
			return sc.Text(), true
		}
	}
	return "", false
}

// rogueDemo shows the hubs refusing the rogue spoke: its certificate is
// valid but names another spoke's tunnel address.
func (l *Lab) rogueDemo(ctx context.Context, t Topology, st *State) error {
	rogue := t.rogues()[0]
	hub := t.hubs()[0]
	victim := t.owner(rogue.Claims)
	rs, _ := st.node(rogue.Site.Name)
	hs, _ := st.node(hub.Site.Name)
	nbma := rogue.Site.NBMA.Addr()
	fmt.Fprintf(l.Out, "\n======== a rogue spoke ========\n")
	fmt.Fprintf(l.Out, "%s (NBMA %s) holds a valid certificate from the lab's CA, but it names %s's tunnel address:\n  %s\n",
		rogue.Site.Name, nbma, victim, rogue.subject())
	fmt.Fprintf(l.Out, "It gets an IKE SA with the hubs and registers its own tunnel address, %s; the hubs compare it with\n"+
		"the certificate's OU=GRE=, refuse (Registration Reply: administratively prohibited), terminate the SA and audit it.\n",
		rogue.Tunnel.Addr())
	var line string
	var refused uint64
	err := waitUntil(ctx, 20*time.Second, func() (bool, error) {
		var ok bool
		line, ok = refusal(hs.Daemon.AuditLog, nbma)
		if r, err := crypto(ctx, hs.Daemon.Socket); err == nil && r.Stats != nil {
			refused = r.Stats.Refused[ipsec.RefusedWrongGRE]
		}
		return ok && refused > 0, nil
	})
	if err != nil {
		return fmt.Errorf("%s did not refuse %s: %w\n%s", hub.Site.Name, rogue.Site.Name, err, tail(hs.Daemon.Log))
	}
	fmt.Fprintf(l.Out, "\n%s's audit log (%s), the refusal:\n  %s\n", hub.Site.Name, hs.Daemon.AuditLog, line)
	fmt.Fprintf(l.Out, "%s's refusal counter (GET %s stats.refused): %s=%d\n", hub.Site.Name, control.PathCrypto, ipsec.RefusedWrongGRE, refused)

	var r control.CacheResponse
	if err := control.NewClient(hs.Daemon.Socket).Get(ctx, control.PathCache, &r); err != nil {
		return err
	}
	var errs []error
	for _, e := range r.Entries {
		if e.Proto.Contains(rogue.Tunnel.Addr()) || e.NBMA == nbma {
			errs = append(errs, fmt.Errorf("%s has an entry for the rogue: %s via %s", hub.Site.Name, e.Proto, e.NBMA))
		}
	}
	v, _ := findNode(t, victim)
	e, ok := entryFor(r, rogue.Claims)
	if !ok || e.NBMA != v.Site.NBMA.Addr() || !strings.Contains(e.Identity, "CN="+victim) {
		errs = append(errs, fmt.Errorf("%s's binding at %s changed: %+v", victim, hub.Site.Name, e))
	}
	fmt.Fprintf(l.Out, "\n%s# show dmvpn   (no %s/%s; %s still at %s, bound with its own certificate: %s)\n",
		hub.Site.Name, rogue.Tunnel.Addr(), nbma, rogue.Claims, e.NBMA, e.Identity)
	l.ctl(ctx, hs.Daemon.Socket, "show", "dmvpn")
	var nhs control.NHSResponse
	if err := control.NewClient(rs.Daemon.Socket).Get(ctx, control.PathNHS, &nhs); err == nil {
		fmt.Fprintf(l.Out, "\n%s's next hop servers:\n", rogue.Site.Name)
		for _, s := range nhs.Servers {
			last := s.LastError
			if last == "" {
				last = "-"
			}
			fmt.Fprintf(l.Out, "  %-15s %-8s last error: %s\n", s.NBMA, s.State, last)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	fmt.Fprintf(l.Out, "The rogue is kept out; %s's binding is untouched.\n", victim)
	return nil
}

func findNode(t Topology, name string) (Node, bool) {
	for _, n := range t.Nodes {
		if n.Site.Name == name {
			return n, true
		}
	}
	return Node{}, false
}

// labCharons returns the pids of the charon processes of the lab in dir:
// those whose strongswan.conf is under it.
func labCharons(dir string) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err != nil || strings.TrimSpace(string(comm)) != "charon" {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue
		}
		for _, kv := range bytes.Split(env, []byte{0}) {
			if v, ok := bytes.CutPrefix(kv, []byte("STRONGSWAN_CONF=")); ok && strings.HasPrefix(string(v), dir+"/") {
				out = append(out, pid)
			}
		}
	}
	return out
}

// killCharons ends the lab's charon processes that outlived their dmvpnd
// and reports those that are still there.
func killCharons(dir string) error {
	left := labCharons(dir)
	for _, pid := range left {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(2 * time.Second)
	for len(left) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		left = labCharons(dir)
	}
	if len(left) > 0 {
		return fmt.Errorf("charon processes of the lab still running: %v", left)
	}
	return nil
}
