package ipsec

import (
	"net/netip"
	"testing"
	"time"
)

// FuzzCheckCredentials: any contents of the CA, certificate and key files
// are checked without a panic, and a set the check passes (consistency
// only) has a certificate and a key that belong together.
func FuzzCheckCredentials(f *testing.F) {
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"), []byte{}, []byte("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"))
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, ca, cert, key []byte) {
		files := func(name string, b []byte) pemFile { return pemFile{name: name, data: b} }
		for _, c := range []CredentialCheck{
			{Tunnel: netip.MustParseAddr("172.16.1.1"), Now: now},
			{Hub: true, Now: now},
			{ConsistencyOnly: true, Now: now},
		} {
			ps := checkFiles(c, []pemFile{files("ca", ca)}, files("cert", cert), files("key", key))
			for _, p := range ps {
				if p.Field != "ca" && p.Field != "cert" && p.Field != "key" || p.Msg == "" {
					t.Fatalf("a problem without field or message: %+v", p)
				}
			}
			if c.ConsistencyOnly && credentialErrors(ps) == nil {
				certs, _, err1 := parsePEM("cert", cert)
				_, keys, err2 := parsePEM("key", key)
				if err1 != nil || err2 != nil || len(certs) == 0 || len(keys) == 0 || !keyMatches(keys[0], certs[0]) {
					t.Fatalf("a set that passed does not hold a certificate and its key")
				}
			}
		}
	})
}
