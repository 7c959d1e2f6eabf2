package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/ipsec"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// dmvpnLegend is Cisco's legend of show dmvpn.
const dmvpnLegend = `Legend: Attrb --> S - Static, D - Dynamic, I - Incomplete
        N - NATed, L - Local, X - No Socket
        T1 - Route Installed, T2 - Nexthop-override
        C - CTS Capable
        # Ent --> Number of NHRP entries with same NBMA peer
        NHS Status: E --> Expecting Replies, R --> Responding, W --> Waiting
        UpDn Time --> Up or Down Time for a Tunnel
==========================================================================
`

// DmvpnView is what show dmvpn prints, and its JSON form.
type DmvpnView struct {
	Node      string           `json:"node"`
	Interface string           `json:"interface"`
	Type      string           `json:"type"`
	Address   netip.Prefix     `json:"address"`
	NBMA      netip.Addr       `json:"nbma,omitzero"`
	Dataplane string           `json:"dataplane"`
	Peers     []DmvpnPeer      `json:"peers"`
	NHS       []nhrp.NHSStatus `json:"nhs,omitempty"`
	// IPsec is set by detail when the node runs IPsec.
	IPsec *CryptoStatus `json:"ipsec,omitempty"`
	// Warnings are the daemon's warnings about the node (IPsec off, a
	// certificate about to expire).
	Warnings []string `json:"warnings,omitempty"`
}

// DmvpnPeer is one NBMA peer of show dmvpn and its entries.
type DmvpnPeer struct {
	NBMA    netip.Addr   `json:"nbma,omitzero"`
	Entries []DmvpnEntry `json:"entries"`
	// IPsec is the peer's IKE SA (detail, IPsec on).
	IPsec *DmvpnIPsec `json:"ipsec,omitempty"`
}

// DmvpnIPsec is a peer's IKE SA in show dmvpn detail.
type DmvpnIPsec struct {
	// State is charon's state of the IKE SA, "" without one; Up says an
	// installed CHILD_SA goes with it.
	State string `json:"state"`
	Up    bool   `json:"up"`
	// Identity is the SA's remote identity, or the certificate subject a
	// registration was authorised with.
	Identity string `json:"identity,omitempty"`
	Conn     string `json:"conn,omitempty"`
	IKEID    string `json:"ike_id,omitempty"`
}

// DmvpnEntry is one row of show dmvpn.
type DmvpnEntry struct {
	Tunnel netip.Addr     `json:"tunnel"`
	State  string         `json:"state"`
	Since  time.Time      `json:"since,omitzero"`
	Attrb  string         `json:"attrb"`
	Target netip.Prefix   `json:"target"`
	Type   nhrp.EntryType `json:"type"`
}

func newShowDmvpn(e *env) *cobra.Command {
	return withKeywords(&cobra.Command{
		Use:   "dmvpn",
		Short: "DMVPN peers (Cisco's columns and legend)",
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := dmvpnView(cmd.Context(), e.client(), has(args, "detail"))
			if err != nil {
				return err
			}
			if has(args, "json") {
				return writeJSON(cmd.OutOrStdout(), v)
			}
			printDmvpn(cmd.OutOrStdout(), v, has(args, "detail"), time.Now())
			return nil
		},
	}, "detail", "json")
}

// dmvpnView gathers show dmvpn from the daemon; with withIPsec, the
// peers' IKE SAs as well.
func dmvpnView(ctx context.Context, c *control.Client, withIPsec bool) (DmvpnView, error) {
	var st control.Status
	var peers control.PeersResponse
	var nhs control.NHSResponse
	for _, q := range []struct {
		path string
		out  any
	}{{control.PathStatus, &st}, {control.PathPeers, &peers}, {control.PathNHS, &nhs}} {
		if err := c.Get(ctx, q.path, q.out); err != nil {
			return DmvpnView{}, err
		}
	}
	v := DmvpnView{Node: st.Node, Interface: st.NHRP.Interface, Type: title(st.NHRP.Role), Address: st.NHRP.Address,
		NBMA: st.NHRP.NBMA, Dataplane: st.Dataplane, NHS: nhs.Servers, Peers: []DmvpnPeer{}, Warnings: st.Warnings}
	peerOf := make(map[netip.Addr]nhrp.PeerStatus, len(peers.Peers))
	for _, p := range peers.Peers {
		peerOf[p.NBMA] = p
	}
	peers.Peers = nil
	nhsOf := map[netip.Addr]nhrp.NHSStatus{}
	for _, n := range nhs.Servers {
		nhsOf[n.NBMA] = n
	}
	index := map[netip.Addr]int{}
	identity := map[netip.Addr]string{}
	// The cache is read entry by entry as it arrives: only the rows are
	// kept (at 100,000 spokes the whole answer, decoded, was several
	// times their size).
	_, err := c.CacheEach(ctx, control.PathCache, func(_ string, en nhrp.CacheEntry) error {
		if en.Type == nhrp.TypeLocal {
			return nil
		}
		if withIPsec && en.Identity != "" && identity[en.NBMA] == "" {
			identity[en.NBMA] = en.Identity
		}
		row := DmvpnEntry{Tunnel: peerAddr(en), Attrb: attrs(en), Target: en.Proto, Type: en.Type, Since: en.Created}
		row.State = "NHRP"
		switch {
		case en.Type == nhrp.TypeNHS:
			n := nhsOf[en.NBMA]
			row.State, row.Since = nhsState(n.State), n.Since
		case en.Type == nhrp.TypeIncomplete || en.Type == nhrp.TypeNegative:
			row.State = "NHRP"
		default:
			if p, ok := peerOf[en.NBMA]; ok {
				row.State, row.Since = peerState(p.State), p.Since
			} else if en.PeerState == "up" || en.PeerState == "" {
				row.State = "UP"
			}
		}
		i, ok := index[en.NBMA]
		if !ok || !en.NBMA.IsValid() {
			i = len(v.Peers)
			index[en.NBMA] = i
			v.Peers = append(v.Peers, DmvpnPeer{NBMA: en.NBMA})
		}
		v.Peers[i].Entries = append(v.Peers[i].Entries, row)
		return nil
	})
	if err != nil {
		return DmvpnView{}, err
	}
	slices.SortStableFunc(v.Peers, func(a, b DmvpnPeer) int { return a.NBMA.Compare(b.NBMA) })
	if withIPsec {
		var api *control.APIError
		cr, err := getCrypto(ctx, c)
		switch {
		case errors.As(err, &api) && api.Status == http.StatusNotFound:
			// a daemon older than IPsec
		case err != nil:
			return DmvpnView{}, err
		case cr.Enabled:
			st := cryptoStatus(cr, time.Now())
			v.IPsec = &st
			byHost := map[netip.Addr][]ipsec.SA{}
			for _, sa := range cr.SAs {
				byHost[sa.RemoteHost] = append(byHost[sa.RemoteHost], sa)
			}
			for i := range v.Peers {
				v.Peers[i].IPsec = peerIPsec(byHost[v.Peers[i].NBMA], v.Peers[i].NBMA, identity[v.Peers[i].NBMA])
			}
		}
	}
	return v, nil
}

// peerIPsec is the IKE SA with a peer (by NBMA address): an established
// one with an installed CHILD_SA if there is one, else the first listed.
func peerIPsec(sas []ipsec.SA, nbma netip.Addr, identity string) *DmvpnIPsec {
	out := &DmvpnIPsec{Identity: identity}
	if !nbma.IsValid() {
		return out
	}
	var found *ipsec.SA
	for i := range sas {
		if sas[i].RemoteHost != nbma {
			continue
		}
		if found == nil || (!found.Up() && sas[i].Up()) {
			found = &sas[i]
		}
	}
	if found != nil {
		out.State, out.Up, out.Conn, out.IKEID = found.State, found.Up(), found.Conn, found.IKEID
		if found.RemoteID != "" {
			out.Identity = found.RemoteID
		}
	}
	return out
}

func peerState(s string) string {
	switch s {
	case "up":
		return "UP"
	case "connecting":
		return "NHRP"
	}
	return "DOWN"
}

func nhsState(s nhrp.NHSState) string {
	switch s {
	case nhrp.NHSUp:
		return "UP"
	case nhrp.NHSProbing:
		return "NHRP"
	}
	return "DOWN"
}

// nhsFlags are Cisco's NHS status letters: R responding, E expecting
// replies, W waiting, D dynamic (learned from DNS).
func nhsFlags(n nhrp.NHSStatus) string {
	f := "W"
	switch n.State {
	case nhrp.NHSUp:
		f = "RE"
	case nhrp.NHSProbing:
		f = "E"
	}
	if n.Hostname != "" {
		f += "D"
	}
	return f
}

func printDmvpn(w io.Writer, v DmvpnView, detail bool, now time.Time) {
	for _, warn := range v.Warnings {
		fmt.Fprintf(w, "%% Warning: %s\n", warn)
	}
	fmt.Fprint(w, dmvpnLegend)
	if detail {
		fmt.Fprintf(w, "Interface %s is up/up, Addr. is %s, VRF \"\"\n", v.Interface, v.Address.Addr())
		fmt.Fprintf(w, "   Tunnel Src./Dest. addr: %s/Multipoint, Tunnel VRF \"\"\n", orDash(v.NBMA))
		if v.IPsec == nil {
			fmt.Fprintf(w, "   Protocol/Transport: \"multi-GRE/IP\", Protect \"\"\n")
		} else {
			fmt.Fprintf(w, "   Protocol/Transport: \"multi-GRE/IP\", Protect \"ipsec\"\n")
			fmt.Fprintf(w, "   IPsec mode %s, %s\n", v.IPsec.Mode, charonState(*v.IPsec))
			if v.IPsec.Error != "" {
				fmt.Fprintf(w, "   %% %s\n", charonError(v.IPsec.Error))
			}
		}
		fmt.Fprintf(w, "   Data plane: %s\n", v.Dataplane)
		fmt.Fprintf(w, "   Node: %s\n", v.Node)
		for _, n := range v.NHS {
			fmt.Fprintf(w, "IPv4 NHS: %s %s priority = %d cluster = 0\n", nhsName(n), nhsFlags(n), n.Priority)
		}
	} else {
		fmt.Fprintf(w, "Interface: %s, IPv4 NHRP Details\n", v.Interface)
	}
	ipsecCols := detail && v.IPsec != nil
	if detail {
		fmt.Fprintf(w, "Type:%s, Total NBMA Peers (v4/v6): %d\n", v.Type, len(v.Peers))
		if ipsecCols {
			fmt.Fprintf(w, "# Ent  Peer NBMA Addr Peer Tunnel Add State  UpDn Tm Attrb    Target Network IKE SA      Remote Identity\n")
			fmt.Fprintf(w, "----- --------------- --------------- ----- -------- ----- ----------------- ----------- ---------------\n")
		} else {
			fmt.Fprintf(w, "# Ent  Peer NBMA Addr Peer Tunnel Add State  UpDn Tm Attrb    Target Network\n")
			fmt.Fprintf(w, "----- --------------- --------------- ----- -------- ----- -----------------\n")
		}
	} else {
		fmt.Fprintf(w, "Type:%s, NHRP Peers:%d,\n\n", v.Type, len(v.Peers))
		fmt.Fprintf(w, " # Ent  Peer NBMA Addr Peer Tunnel Add State  UpDn Tm Attrb\n")
		fmt.Fprintf(w, " ----- --------------- --------------- ----- -------- -----\n")
	}
	for _, p := range v.Peers {
		nbma := "UNKNOWN"
		if p.NBMA.IsValid() {
			nbma = p.NBMA.String()
		}
		for i, r := range p.Entries {
			ent, addr := fmt.Sprint(len(p.Entries)), nbma
			if i > 0 {
				ent, addr = "", ""
			}
			switch {
			case ipsecCols:
				sa, id := "", ""
				if i == 0 {
					sa, id = "-", "-"
					if p.IPsec != nil {
						sa, id = orNone(p.IPsec.State), orNone(p.IPsec.Identity)
					}
				}
				line := fmt.Sprintf("%5s %-15s %15s %5s %8s %5s %17s %-11s %s", ent, addr, orDash(r.Tunnel), r.State, upDown(r.Since, now), r.Attrb, r.Target, sa, id)
				fmt.Fprintln(w, strings.TrimRight(line, " "))
			case detail:
				fmt.Fprintf(w, "%5s %-15s %15s %5s %8s %5s %17s\n", ent, addr, orDash(r.Tunnel), r.State, upDown(r.Since, now), r.Attrb, r.Target)
			default:
				fmt.Fprintf(w, "%6s %-15s %15s %5s %8s %5s\n", ent, addr, orDash(r.Tunnel), r.State, upDown(r.Since, now), r.Attrb)
			}
		}
	}
	if len(v.Peers) == 0 {
		fmt.Fprintln(w, strings.TrimSpace("(no peers)"))
	}
}

// nhsName is a server's tunnel address, or its NBMA address while the
// tunnel address is not known yet.
func nhsName(n nhrp.NHSStatus) string {
	if n.Proto.IsValid() {
		return n.Proto.String()
	}
	return n.NBMA.String() + " (nbma)"
}
