package lab

import (
	"fmt"
	"io"
	"slices"
	"strconv"
	"time"

	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/ipsec"
)

// printSAs writes the SAs of a GET /v1/crypto answer as a table.
func printSAs(w io.Writer, name string, r control.CryptoResponse) {
	up := 0
	for _, sa := range r.SAs {
		if sa.Up() {
			up++
		}
	}
	fmt.Fprintf(w, "%s: %d IPsec SAs, %d up (GET %s)\n", name, len(r.SAs), up, control.PathCrypto)
	if r.Error != "" {
		fmt.Fprintf(w, "  (charon: %s)\n", r.Error)
	}
	sas := slices.Clone(r.SAs)
	slices.SortFunc(sas, func(a, b ipsec.SA) int { return a.RemoteHost.Compare(b.RemoteHost) })
	fmt.Fprintf(w, "  %-21s %-12s %-8s %s\n", "PEER", "STATE", "UP", "PEER CERTIFICATE")
	for _, sa := range sas {
		peer := sa.RemoteHost.String()
		if sa.RemotePort != 0 {
			peer += ":" + strconv.Itoa(sa.RemotePort)
		}
		since := "-"
		if !sa.Established.IsZero() {
			since = time.Since(sa.Established).Round(time.Second).String()
		}
		fmt.Fprintf(w, "  %-21s %-12s %-8s %s\n", peer, sa.State, since, sa.RemoteID)
	}
}
