package ctl

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/ipsec"
)

// CryptoStatus is the IPsec state every show crypto command starts with.
type CryptoStatus struct {
	Enabled   bool       `json:"enabled"`
	Mode      ipsec.Mode `json:"mode,omitempty"`
	Connected bool       `json:"charon_connected"`
	CharonPID int        `json:"charon_pid,omitempty"`
	Restarts  uint64     `json:"charon_restarts"`
	// Certificate is this node's certificate in force and DaysLeft the
	// whole days until it expires.
	Certificate *ipsec.CertInfo `json:"certificate,omitempty"`
	DaysLeft    *int            `json:"certificate_days_left,omitempty"`
	// CRLs are the certificate revocation lists in force, each marked
	// stale once its next update is past.
	CRLs []ipsec.CRLInfo `json:"crls,omitempty"`
	// Error says why the SAs could not be listed (charon away).
	Error string `json:"error,omitempty"`
}

// CryptoSAView is what show crypto sa prints, and its JSON form.
type CryptoSAView struct {
	CryptoStatus
	SAs []CryptoSA `json:"sas"`
}

// CryptoSA is one row of show crypto sa: an IKE SA with the counters of
// its installed CHILD_SAs summed.
type CryptoSA struct {
	Peer netip.Addr `json:"peer"`
	// Port is the peer's IKE port when NAT-T is in use.
	Port        int       `json:"port,omitempty"`
	State       string    `json:"state"`
	Identity    string    `json:"remote_identity"`
	Established time.Time `json:"established,omitzero"`
	Children    int       `json:"children_installed"`
	BytesIn     uint64    `json:"bytes_in"`
	PacketsIn   uint64    `json:"packets_in"`
	BytesOut    uint64    `json:"bytes_out"`
	PacketsOut  uint64    `json:"packets_out"`
	RekeySecs   int64     `json:"rekey_seconds,omitempty"`
	Initiator   bool      `json:"initiator"`
	Conn        string    `json:"conn"`
	IKEID       string    `json:"ike_id"`
	// CertExpires is when the certificate the peer authenticated with
	// expires, CertDaysLeft the whole days until then (absent when it
	// was not captured).
	CertExpires  time.Time `json:"remote_cert_expires,omitzero"`
	CertDaysLeft *int      `json:"remote_cert_days_left,omitempty"`
}

// CryptoIKEView is what show crypto ikev2 sa prints: the IKE SAs as the
// daemon lists them.
type CryptoIKEView struct {
	CryptoStatus
	SAs []ipsec.SA `json:"sas"`
}

// CryptoIPsecView is what show crypto ipsec sa prints: every CHILD_SA.
type CryptoIPsecView struct {
	CryptoStatus
	Children []CryptoChild `json:"children"`
}

// CryptoChild is a CHILD_SA with the IKE SA it belongs to.
type CryptoChild struct {
	Peer      netip.Addr `json:"peer"`
	Port      int        `json:"port,omitempty"`
	LocalHost netip.Addr `json:"local_host"`
	Conn      string     `json:"conn"`
	IKEID     string     `json:"ike_id"`
	IKEState  string     `json:"ike_state"`
	ipsec.ChildSA
}

func newShowCrypto(e *env) *cobra.Command {
	show := func(print func(io.Writer, control.CryptoResponse, time.Time) error, view func(control.CryptoResponse, time.Time) any) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, args []string) error {
			r, err := getCrypto(cmd.Context(), e.client())
			if err != nil {
				return err
			}
			if has(args, "json") {
				return writeJSON(cmd.OutOrStdout(), view(r, time.Now()))
			}
			return print(cmd.OutOrStdout(), r, time.Now())
		}
	}
	return group("crypto", "IPsec (IKE and ESP) information",
		withKeywords(&cobra.Command{Use: "sa", Short: "IKE SAs per peer with their CHILD_SAs' counters",
			RunE: show(printCryptoSA, func(r control.CryptoResponse, now time.Time) any { return cryptoSAView(r, now) })}, "json"),
		group("ikev2", "IKEv2 information",
			withKeywords(&cobra.Command{Use: "sa", Short: "IKE SAs",
				RunE: show(printCryptoIKE, func(r control.CryptoResponse, now time.Time) any { return cryptoIKEView(r, now) })}, "json")),
		group("ipsec", "IPsec (ESP) information",
			withKeywords(&cobra.Command{Use: "sa", Short: "CHILD_SAs: traffic selectors, mode, counters",
				RunE: show(printCryptoIPsec, func(r control.CryptoResponse, now time.Time) any { return cryptoIPsecView(r, now) })}, "json")),
	)
}

func newClearCrypto(e *env) *cobra.Command {
	return group("crypto", "IPsec",
		withArg(&cobra.Command{Use: "sa PEER", Short: "Terminate the SAs with a peer (it brings them up again if it needs them)",
			Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				peer, err := netip.ParseAddr(args[0])
				if err != nil {
					return fmt.Errorf("%q is not an IP address", args[0])
				}
				var r control.ClearResponse
				if err := e.client().Post(cmd.Context(), control.PathCryptoClear, control.CryptoClearRequest{Peer: peer.Unmap()}, &r); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%% %d IKE %s with %s cleared\n", r.Cleared, plural(r.Cleared, "SA", "SAs"), peer.Unmap())
				return nil
			}}, "PEER", "The peer's NBMA address"),
	)
}

// getCrypto asks the daemon for its IPsec state.
func getCrypto(ctx context.Context, c *control.Client) (control.CryptoResponse, error) {
	var r control.CryptoResponse
	err := c.Get(ctx, control.PathCrypto, &r)
	return r, err
}

func cryptoStatus(r control.CryptoResponse, now time.Time) CryptoStatus {
	st := CryptoStatus{Enabled: r.Enabled, Error: r.Error}
	if r.Stats != nil {
		st.Mode, st.Connected, st.CharonPID, st.Restarts = r.Stats.Mode, r.Stats.Connected, r.Stats.CharonPID, r.Stats.Restarts
		if c := r.Stats.Certificate; c != nil && !c.NotAfter.IsZero() {
			st.Certificate, st.DaysLeft = c, daysLeft(c.NotAfter, now)
		}
		for _, l := range r.Stats.CRLs {
			l.Stale = !l.NextUpdate.IsZero() && now.After(l.NextUpdate)
			st.CRLs = append(st.CRLs, l)
		}
	}
	return st
}

// daysLeft is the whole days until t (negative once past).
func daysLeft(t, now time.Time) *int {
	d := t.Sub(now)
	n := int(d / (24 * time.Hour))
	if d < 0 {
		n = -int((-d + 24*time.Hour - 1) / (24 * time.Hour))
	}
	return &n
}

// days prints days left as show crypto sa's column does: "359", "0",
// "expired", or "-" when unknown.
func days(n *int) string {
	switch {
	case n == nil:
		return "-"
	case *n < 0:
		return "expired"
	}
	return fmt.Sprint(*n)
}

// installed reports whether a CHILD_SA carries traffic (a REKEYED one does
// until it is deleted).
func installed(c ipsec.ChildSA) bool { return c.State == "INSTALLED" || c.State == "REKEYED" }

// natPort is the peer's port when NAT-T moved IKE off 500, or 0.
func natPort(sa ipsec.SA) int {
	if sa.RemotePort != 0 && (sa.NATRemote || sa.RemotePort != 500) {
		return sa.RemotePort
	}
	return 0
}

// hostPort prints an address with Cisco's /port when there is one.
func hostPort(a netip.Addr, port int) string {
	if port == 0 {
		return orDash(a)
	}
	return fmt.Sprintf("%s/%d", orDash(a), port)
}

func cryptoSAView(r control.CryptoResponse, now time.Time) CryptoSAView {
	v := CryptoSAView{CryptoStatus: cryptoStatus(r, now), SAs: []CryptoSA{}}
	for _, sa := range r.SAs {
		row := CryptoSA{Peer: sa.RemoteHost, Port: natPort(sa), State: sa.State, Identity: sa.RemoteID,
			Established: sa.Established, RekeySecs: int64(sa.RekeyIn / time.Second), Initiator: sa.Initiator,
			Conn: sa.Conn, IKEID: sa.IKEID, CertExpires: sa.RemoteCertExpires}
		if !sa.RemoteCertExpires.IsZero() {
			row.CertDaysLeft = daysLeft(sa.RemoteCertExpires, now)
		}
		for _, c := range sa.Children {
			if !installed(c) {
				continue
			}
			row.Children++
			row.BytesIn += c.BytesIn
			row.PacketsIn += c.PacketsIn
			row.BytesOut += c.BytesOut
			row.PacketsOut += c.PacketsOut
		}
		v.SAs = append(v.SAs, row)
	}
	return v
}

func cryptoIKEView(r control.CryptoResponse, now time.Time) CryptoIKEView {
	v := CryptoIKEView{CryptoStatus: cryptoStatus(r, now), SAs: r.SAs}
	if v.SAs == nil {
		v.SAs = []ipsec.SA{}
	}
	return v
}

func cryptoIPsecView(r control.CryptoResponse, now time.Time) CryptoIPsecView {
	v := CryptoIPsecView{CryptoStatus: cryptoStatus(r, now), Children: []CryptoChild{}}
	for _, sa := range r.SAs {
		for _, c := range sa.Children {
			v.Children = append(v.Children, CryptoChild{Peer: sa.RemoteHost, Port: natPort(sa), LocalHost: sa.LocalHost,
				Conn: sa.Conn, IKEID: sa.IKEID, IKEState: sa.State, ChildSA: c})
		}
	}
	return v
}

// printCryptoStatus prints the header of the show crypto commands; false
// when IPsec is off and nothing follows.
func printCryptoStatus(w io.Writer, st CryptoStatus) bool {
	if !st.Enabled {
		fmt.Fprintln(w, "% IPsec is not configured on this node")
		return false
	}
	fmt.Fprintf(w, "IPsec mode %s, %s, charon restarts %d\n", st.Mode, charonState(st), st.Restarts)
	if c := st.Certificate; c != nil {
		left := fmt.Sprintf("%s days left", days(st.DaysLeft))
		if st.DaysLeft != nil && *st.DaysLeft < 0 {
			left = "EXPIRED"
		}
		fmt.Fprintf(w, "Local certificate %s, serial %s, expires %s (%s)\n", c.Subject, c.Serial, c.NotAfter.UTC().Format(time.DateOnly), left)
	}
	for _, l := range st.CRLs {
		num, next := "", "no next update"
		if l.Number != "" {
			num = ", number " + l.Number
		}
		if !l.NextUpdate.IsZero() {
			next = "next update " + l.NextUpdate.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(w, "CRL in force: %s%s, issued %s, %s, %d revoked (%s)\n", l.Issuer, num,
			l.ThisUpdate.UTC().Format(time.RFC3339), next, l.Revoked, l.File)
		if l.Stale {
			fmt.Fprintf(w, "%% Warning: the CRL of %s is stale: its next update was due %s\n", l.Issuer, l.NextUpdate.UTC().Format(time.RFC3339))
		}
	}
	if st.Error != "" {
		fmt.Fprintf(w, "%% %s\n", charonError(st.Error))
	}
	return true
}

// charonState is "charon pid 4242 (connected)".
func charonState(st CryptoStatus) string {
	conn := "connected"
	if !st.Connected {
		conn = "not connected"
	}
	if st.CharonPID == 0 {
		return "charon " + conn
	}
	return fmt.Sprintf("charon pid %d (%s)", st.CharonPID, conn)
}

// charonError words the daemon's reason for not listing SAs as
// "charon is not reachable: …".
func charonError(msg string) string {
	msg = strings.TrimPrefix(msg, "ipsec: ")
	if strings.HasPrefix(msg, "charon is not reachable") {
		return msg
	}
	return "charon is not reachable: " + msg
}

func printCryptoSA(w io.Writer, r control.CryptoResponse, now time.Time) error {
	v := cryptoSAView(r, now)
	if !printCryptoStatus(w, v.CryptoStatus) {
		return nil
	}
	if len(v.SAs) == 0 {
		if v.Error == "" {
			fmt.Fprintln(w, "(no SAs)")
		}
		return nil
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "Peer NBMA Addr\tState\tUp Time\tChild\tBytes In\tPkts In\tBytes Out\tPkts Out\tRekey\tRole\tConn\tCert Days\tRemote Identity")
	for _, s := range v.SAs {
		rekey := "-"
		if s.RekeySecs > 0 {
			rekey = clock(time.Duration(s.RekeySecs) * time.Second)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t%s\n", hostPort(s.Peer, s.Port), s.State,
			upDown(s.Established, now), s.Children, s.BytesIn, s.PacketsIn, s.BytesOut, s.PacketsOut, rekey,
			role(s.Initiator), s.Conn, days(s.CertDaysLeft), orNone(s.Identity))
	}
	return tw.Flush()
}

func printCryptoIKE(w io.Writer, r control.CryptoResponse, now time.Time) error {
	v := cryptoIKEView(r, now)
	if !printCryptoStatus(w, v.CryptoStatus) {
		return nil
	}
	if len(v.SAs) == 0 {
		if v.Error == "" {
			fmt.Fprintln(w, "(no IKE SAs)")
		}
		return nil
	}
	fmt.Fprintf(w, "\n IPv4 Crypto IKEv2  SA\n\n")
	fmt.Fprintf(w, "%-9s %-21s %-21s %-12s %s\n", "Tunnel-id", "Local", "Remote", "Status", "Role")
	for _, sa := range v.SAs {
		n, total := 0, len(sa.Children)
		for _, c := range sa.Children {
			if installed(c) {
				n++
			}
		}
		rekey := "-"
		if sa.RekeyIn > 0 {
			rekey = clock(sa.RekeyIn)
		}
		fmt.Fprintf(w, "%-9s %-21s %-21s %-12s %s\n", sa.IKEID, orDash(sa.LocalHost), hostPort(sa.RemoteHost, natPort(sa)), sa.State, role(sa.Initiator))
		fmt.Fprintf(w, "      Conn: %s, Local ID: %s, Remote ID: %s\n", sa.Conn, orNone(sa.LocalID), orNone(sa.RemoteID))
		fmt.Fprintf(w, "      Up Time: %s, Rekey in: %s, CHILD_SAs: %d installed of %d", upDown(sa.Established, now), rekey, n, total)
		if sa.NATRemote {
			fmt.Fprintf(w, ", NAT-T")
		}
		fmt.Fprintln(w)
	}
	return nil
}

func printCryptoIPsec(w io.Writer, r control.CryptoResponse, now time.Time) error {
	v := cryptoIPsecView(r, now)
	if !printCryptoStatus(w, v.CryptoStatus) {
		return nil
	}
	if len(v.Children) == 0 {
		if v.Error == "" {
			fmt.Fprintln(w, "(no CHILD_SAs)")
		}
		return nil
	}
	for i, c := range v.Children {
		if i == 0 || c.IKEID != v.Children[i-1].IKEID || c.Conn != v.Children[i-1].Conn {
			fmt.Fprintln(w)
			fmt.Fprintf(w, "peer %s", orDash(c.Peer))
			if c.Port != 0 {
				fmt.Fprintf(w, " port %d", c.Port)
			}
			fmt.Fprintf(w, ", conn %s, IKE SA %s %s\n", c.Conn, c.IKEID, c.IKEState)
			fmt.Fprintf(w, "   local crypto endpt.: %s, remote crypto endpt.: %s\n", orDash(c.LocalHost), orDash(c.Peer))
		}
		fmt.Fprintf(w, "  CHILD_SA %s{%s} %s, mode %s", c.Name, c.ID, c.State, c.Mode)
		if !c.Installed.IsZero() {
			fmt.Fprintf(w, ", installed %s", upDown(c.Installed, now))
		}
		if c.RekeyIn > 0 {
			fmt.Fprintf(w, ", rekey in %s", clock(c.RekeyIn))
		}
		fmt.Fprintln(w)
		fmt.Fprintf(w, "   local  ident: %s\n", orNone(strings.Join(c.LocalTS, " ")))
		fmt.Fprintf(w, "   remote ident: %s\n", orNone(strings.Join(c.RemoteTS, " ")))
		fmt.Fprintf(w, "    #pkts encaps: %d, #bytes out: %d\n", c.PacketsOut, c.BytesOut)
		fmt.Fprintf(w, "    #pkts decaps: %d, #bytes in: %d\n", c.PacketsIn, c.BytesIn)
	}
	return nil
}

func role(initiator bool) string {
	if initiator {
		return "initiator"
	}
	return "responder"
}

// orNone prints a string or "-".
func orNone(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
