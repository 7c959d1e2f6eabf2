package integration

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/opendmvpn/dmvpn/lab/testbed"
)

// TestRevocationByDistributionPoint: certificates that name a CRL
// distribution point are checked against the list served there — fetched
// by the managed charon's revocation plugin with curl, no ipsec.crl
// configured. The list on the internet router's web server revokes spoke
// 2: the hub's charon refuses its IKE authentication (and says why), so
// spoke 2 never has an SA with the hub nor a registration, while spokes 1
// and 3, whose certificates name the same list, register with their
// identities.
func TestRevocationByDistributionPoint(t *testing.T) {
	t.Parallel()
	requireTestbed(t)
	requireCharon(t)
	p := newTestPKI(t)
	t.Cleanup(func() { p.dumpLogs() })
	const crlURL = "http://192.0.2.254:8080/ca.crl"
	p.ca.CRLURLs = []string{crlURL}

	// The list revokes spoke 2's certificate, read from its file.
	var fetched atomic.Int32
	serve := func(w http.ResponseWriter, r *http.Request) {
		b, err := os.ReadFile(filepath.Join(p.dir, "s2.crt"))
		blk, _ := pem.Decode(b)
		if err != nil || blk == nil {
			http.Error(w, "spoke 2's certificate is not written yet", http.StatusServiceUnavailable)
			return
		}
		cert, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		crl, err := p.ca.CRL(1, []*big.Int{cert.SerialNumber}, time.Hour)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		der, _ := pem.Decode(crl)
		fetched.Add(1)
		w.Header().Set("Content-Type", "application/pkix-crl")
		w.Write(der.Bytes)
	}
	// Every certificate issued (and written) before any daemon starts: a
	// list fetched before spoke 2's serial is known would be cached by
	// the hub's charon until its next update.
	yaml := map[string]string{}
	for _, n := range []string{"hub", "s1", "s2", "s3"} {
		yaml[n] = p.ipsecExtra()(n)
	}
	x := newE2EWith(t, "userspace", func(n string) string { return yaml[n] }, func(tb *testbed.Testbed) {
		l := listenIn(t, tb.Node("inet").NS, "192.0.2.254:8080")
		srv := &http.Server{Handler: http.HandlerFunc(serve), ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(l)
		t.Cleanup(func() { srv.Close() })
	})

	waitFor(t, 45*time.Second, "spokes 1 and 3 registered over IPsec", func() bool { return x.registered(0) && x.registered(2) })
	for _, i := range []int{0, 2} {
		e, _ := x.hub.entry(netip.PrefixFrom(e2eTunnel[i], 32))
		if !strings.Contains(e.Identity, "OU=GRE="+e2eTunnel[i].String()) {
			t.Errorf("spoke %d's registration without its certificate identity: %s", i+1, jsonString(e))
		}
	}
	// The refusal: the hub's charon found spoke 2's certificate revoked
	// by the list it fetched (what shows the absence below is no matter
	// of time).
	hubLog := filepath.Join(p.dir, "state-hub", "charon.log")
	waitFor(t, 45*time.Second, "the hub's charon to refuse spoke 2's revoked certificate", func() bool {
		b, _ := os.ReadFile(hubLog)
		return bytes.Contains(b, []byte("certificate was revoked")) && bytes.Contains(b, []byte("CN=s2"))
	})
	logRevocation(t, p)
	if n := fetched.Load(); n == 0 {
		t.Errorf("nobody fetched the list at %s", crlURL)
	} else {
		t.Logf("the list at %s fetched %d times", crlURL, n)
	}
	if x.registered(1) {
		t.Errorf("spoke 2, revoked by the distribution point's list, is registered: %s", jsonString(x.hub.cache()))
	}
	if x.hub.saUpWith(nbmaOf(x, 1)) {
		t.Errorf("the hub has an SA up with spoke 2, revoked by the distribution point's list")
	}
}

// listenIn opens a TCP listener inside a network namespace: the socket
// stays there while the test serves from it.
func listenIn(t *testing.T, ns, addr string) net.Listener {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer orig.Close()
	h, err := netns.GetFromName(ns)
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	l, lerr := net.Listen("tcp", addr)
	if err := netns.Set(orig); err != nil {
		// Still locked: the goroutine ends with its thread, which Go then
		// discards rather than run others in the wrong namespace.
		t.Fatalf("back to the test's namespace: %v", err)
	}
	runtime.UnlockOSThread()
	if lerr != nil {
		t.Fatal(lerr)
	}
	return l
}

// logRevocation logs the hub's charon lines about the list and the
// revoked certificate.
func logRevocation(t *testing.T, p *testPKI) {
	b, _ := os.ReadFile(filepath.Join(p.dir, "state-hub", "charon.log"))
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "revoked") || strings.Contains(l, "crl") || strings.Contains(l, "CRL") {
			lines = append(lines, l)
		}
	}
	if len(lines) > 20 {
		lines = lines[:20]
	}
	t.Logf("the hub's charon on revocation:\n%s", strings.Join(lines, "\n"))
}
