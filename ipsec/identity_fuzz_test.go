package ipsec

import "testing"

// FuzzParseIdentity: any bytes a peer's certificate could hold are either
// refused or read into an identity with at most one tunnel address, and
// never panic the parser; what is read can also be rendered as charon
// shows it.
func FuzzParseIdentity(f *testing.F) {
	ca := newCA(f)
	for _, s := range []string{
		"C=FI, O=Example, OU=GRE=10.0.0.11, OU=AS=65011, OU=NET=10.11.0.0/24, CN=spoke1",
		"C=FI, O=Example, OU=GRE=fd00::11, OU=NET=fd11::/64, CN=spoke6",
		"C=FI, O=Example, CN=hub1",
	} {
		f.Add(issue(f, ca, dn(f, s)))
	}
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x01})
	f.Fuzz(func(t *testing.T, der []byte) {
		id, err := ParseIdentity(der)
		if err != nil {
			if id != nil {
				t.Fatalf("identity %+v with error %v", id, err)
			}
			return
		}
		if len(id.GRE) > 1 {
			t.Fatalf("%d tunnel addresses accepted", len(id.GRE))
		}
		for _, a := range id.GRE {
			if !a.IsValid() {
				t.Fatalf("invalid tunnel address in %+v", id)
			}
		}
		// What was read can be matched to an SA's remote identity.
		if _, err := renderLikeCharon(der); err != nil {
			t.Fatalf("identity read but not rendered: %v", err)
		}
	})
}
