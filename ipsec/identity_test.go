package ipsec

import (
	"bytes"
	"crypto/x509/pkix"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/opendmvpn/dmvpn/internal/pki"
)

func newCA(t testing.TB) *pki.CA {
	t.Helper()
	ca, err := pki.NewCA("C=FI, O=Example, CN=Example DMVPN CA")
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func issue(t testing.TB, ca *pki.CA, subj pkix.RDNSequence) []byte {
	t.Helper()
	is, err := ca.Issue(subj, time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	return is.Cert.Raw
}

func dn(t testing.TB, s string) pkix.RDNSequence {
	t.Helper()
	d, err := pki.ParseDN(s)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestParseIdentity(t *testing.T) {
	ca := newCA(t)
	der := issue(t, ca, dn(t, "C=FI, O=Example, OU=GRE=10.0.0.11, OU=AS=65011, OU=NET=10.11.0.0/24, OU=NET=10.11.1.0/24, CN=spoke1"))
	id, err := ParseIdentity(der)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{"GRE": {"10.0.0.11"}, "AS": {"65011"}, "NET": {"10.11.0.0/24", "10.11.1.0/24"}}
	if diff := cmp.Diff(want, id.Attrs()); diff != "" {
		t.Errorf("attrs (-want +got):\n%s", diff)
	}
	if id.GRE[0] != netip.MustParseAddr("10.0.0.11") || id.Serial == "" {
		t.Errorf("identity %+v", id)
	}
	// The string strongSwan shows for it, and ours, agree.
	s, err := renderLikeCharon(der)
	if err != nil || s != "C=FI, O=Example, OU=GRE=10.0.0.11, OU=AS=65011, OU=NET=10.11.0.0/24, OU=NET=10.11.1.0/24, CN=spoke1" {
		t.Errorf("rendered %q, %v", s, err)
	}
}

func TestParseIdentityRefuses(t *testing.T) {
	ca := newCA(t)
	base := dn(t, "C=FI, O=Example")
	with := func(extra ...pkix.RelativeDistinguishedNameSET) pkix.RDNSequence {
		return append(append(pkix.RDNSequence{}, base...), extra...)
	}
	cn := pki.RDN(pki.ParseDNOID("CN"), "x")
	tests := []struct {
		name string
		subj pkix.RDNSequence
	}{
		// One OU whose value reads, once rendered, as two: the attack.
		{"OU value with ', OU=GRE='", with(pki.RDN(pki.OU, "GRE=10.0.0.13, OU=GRE=10.0.0.11"), cn)},
		{"OU value with ', '", with(pki.RDN(pki.OU, "Network Ops, Inc"), pki.RDN(pki.OU, "GRE=10.0.0.11"), cn)},
		{"second '=' in a value", with(pki.RDN(pki.OU, "AS=65013=GRE=10.0.0.11"), cn)},
		{"non-ASCII", with(pki.RDN(pki.ParseDNOID("O"), "Exämple Oy"), pki.RDN(pki.OU, "GRE=10.0.0.11"), cn)},
		{"two OU=GRE=", with(pki.RDN(pki.OU, "GRE=10.0.0.11"), pki.RDN(pki.OU, "GRE=10.0.0.12"), cn)},
		{"GRE not an address", with(pki.RDN(pki.OU, "GRE=spoke1"), cn)},
		{"AS not a number", with(pki.RDN(pki.OU, "GRE=10.0.0.11"), pki.RDN(pki.OU, "AS=big"), cn)},
		{"NET not a prefix", with(pki.RDN(pki.OU, "GRE=10.0.0.11"), pki.RDN(pki.OU, "NET=10.11.0.0"), cn)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id, err := ParseIdentity(issue(t, ca, tc.subj))
			if !errors.Is(err, ErrAmbiguous) {
				t.Fatalf("got %+v, %v; want ErrAmbiguous", id, err)
			}
		})
	}
}

func TestParseIdentityWithoutGRE(t *testing.T) {
	id, err := ParseIdentity(issue(t, newCA(t), dn(t, "C=FI, O=Example, OU=Routers, CN=x")))
	if err != nil || len(id.GRE) != 0 {
		t.Fatalf("%+v %v", id, err)
	}
}

// TestMergeCert: a renewed certificate (same subject) replaces the old
// one; two different subjects that charon renders alike make the
// rendering ambiguous for good.
func TestMergeCert(t *testing.T) {
	ca, err := pki.NewCA("C=FI, O=Example, CN=CA")
	if err != nil {
		t.Fatal(err)
	}
	issue := func(subj pkix.RDNSequence, notBefore time.Time) []byte {
		is, err := ca.Issue(subj, notBefore, notBefore.AddDate(1, 0, 0))
		if err != nil {
			t.Fatal(err)
		}
		return is.Cert.Raw
	}
	dn, _ := pki.ParseDN("C=FI, O=Example, OU=GRE=10.0.0.11, CN=s1")
	t0 := time.Now().Add(-time.Hour)
	old, renewed := issue(dn, t0.Add(-24*time.Hour)), issue(dn, t0)
	if got := mergeCert(old, renewed, nil); !bytes.Equal(got, renewed) {
		t.Error("the renewed certificate did not replace the old one")
	}
	if got := mergeCert(renewed, old, nil); !bytes.Equal(got, renewed) {
		t.Error("an older certificate replaced the renewed one")
	}
	// Renewed within the same second (same dates): the one that appeared
	// in charon's cache last, whatever the listing order.
	same1, same2 := issue(dn, t0), issue(dn, t0)
	seen := map[string]time.Time{string(same1): t0, string(same2): t0.Add(time.Second)}
	if got := mergeCert(same2, same1, seen); !bytes.Equal(got, same2) {
		t.Error("of two certificates with the same dates, the one seen first won")
	}
	if got := mergeCert(same1, same2, seen); !bytes.Equal(got, same2) {
		t.Error("of two certificates with the same dates, the one seen last lost")
	}
	// One O value that renders as two attributes.
	o := pki.ParseDNOID("O")
	tricky := pkix.RDNSequence{pki.RDN(pki.ParseDNOID("C"), "FI"), pki.RDN(o, "Example, OU=GRE=10.0.0.11"), pki.RDN(pki.ParseDNOID("CN"), "s1")}
	plain, _ := pki.ParseDN("C=FI, O=Example, OU=GRE=10.0.0.11, CN=s1")
	a, b := issue(plain, t0), issue(tricky, t0)
	ra, _ := renderLikeCharon(a)
	rb, _ := renderLikeCharon(b)
	if ra != rb {
		t.Fatalf("the two subjects render differently (%q, %q): the test needs them alike", ra, rb)
	}
	got := mergeCert(a, b, nil)
	if !bytes.Equal(got, ambiguousCert) {
		t.Fatal("two subjects rendering alike were not marked ambiguous")
	}
	if !bytes.Equal(mergeCert(got, a, nil), ambiguousCert) {
		t.Error("ambiguity forgotten")
	}
}
