package lab

import (
	"context"
	"fmt"
	"time"
)

// Revoke revokes the certificate of a hub or spoke: the lab's CA signs the
// next CRL with it, in place of the one every node's file names; each node
// reads it within a second, ends the SAs and registrations of the node
// and refuses it from then on.
func (l *Lab) Revoke(ctx context.Context, node string) error {
	st, err := l.load()
	if err != nil {
		return err
	}
	if st == nil {
		return fmt.Errorf("no lab is up in %s", l.Dir)
	}
	if !st.IPsec {
		return fmt.Errorf("the lab runs without IPsec: no certificate to revoke")
	}
	serial, number, err := revokeCert(st.PKI, node)
	if err != nil {
		return err
	}
	fmt.Fprintf(l.Out, "%s's certificate (serial %s) revoked: CRL number %d in place at %s, %s; the nodes end its SAs and registrations within a second or two.\n",
		node, serial, number, st.PKI+"/ca.crl", time.Now().Format(time.TimeOnly))
	return nil
}
