package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"go.uber.org/goleak"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/gre/gretest"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// pair is a hub and a spoke engine over the in-memory GRE fake, the spoke
// registered with the hub.
type pair struct {
	hub, spoke       *nhrp.Engine
	hubDev, spokeDev *gretest.Device
}

var (
	hubNBMA   = netip.MustParseAddr("192.0.2.1")
	spokeNBMA = netip.MustParseAddr("198.51.100.1")
	hubAddr   = netip.MustParseAddr("172.16.0.1")
	spokeAddr = netip.MustParseAddr("172.16.1.1")
)

func newPair(t *testing.T) *pair {
	t.Helper()
	in := gretest.NewInternet()
	hd, err := in.NewDevice(gretest.Config{Name: "gre-hub", NBMA: hubNBMA, Prefix: netip.PrefixFrom(hubAddr, 16), Key: 7})
	if err != nil {
		t.Fatal(err)
	}
	sd, err := in.NewDevice(gretest.Config{Name: "gre-spoke", NBMA: spokeNBMA, Prefix: netip.PrefixFrom(spokeAddr, 16), Key: 7})
	if err != nil {
		t.Fatal(err)
	}
	p := &pair{hubDev: hd, spokeDev: sd}
	run := func(cfg nhrp.Config, dev *gretest.Device) *nhrp.Engine {
		e, err := nhrp.New(cfg, nhrp.Deps{Tunnel: dev})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		go func() { _ = e.Run(ctx) }()
		t.Cleanup(func() {
			cancel()
			<-e.Done()
			dev.Close()
		})
		return e
	}
	p.hub = run(nhrp.Config{Role: nhrp.RoleHub}, hd)
	p.spoke = run(nhrp.Config{Role: nhrp.RoleSpoke, Shortcut: true,
		NHS:        []nhrp.NHSConfig{{Proto: hubAddr, NBMA: hubNBMA}},
		StaticMaps: []nhrp.StaticMap{{Proto: netip.MustParsePrefix("172.16.9.9/32"), NBMA: netip.MustParseAddr("192.0.2.9")}}}, sd)
	deadline := time.Now().Add(5 * time.Second)
	for {
		ns, err := p.spoke.NHS(context.Background())
		if err == nil && len(ns) == 1 && ns[0].State == nhrp.NHSUp {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("the spoke did not register: %+v %v", ns, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fakeDaemon serves an engine.
type fakeDaemon struct {
	mu      sync.Mutex
	eng     Engine
	dev     gre.Device
	reloads int
	dryRuns []bool
	reload  func() ([]string, error)
}

func (f *fakeDaemon) Engine() Engine {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.eng
}

func (f *fakeDaemon) Info() Info {
	return Info{Node: "spoke1", Role: "spoke", Dataplane: "gretest", DataplaneReason: "test", ConfigFile: "/etc/dmvpn/dmvpnd.yaml"}
}

func (f *fakeDaemon) Counters() (gre.Counters, bool) {
	if f.dev == nil {
		return gre.Counters{}, false
	}
	return f.dev.Counters(), true
}

func (f *fakeDaemon) RunningConfig() []byte { return []byte("node: spoke1\n") }

func (f *fakeDaemon) Reload(ctx context.Context, dryRun bool) ([]string, error) {
	f.mu.Lock()
	f.reloads++
	f.dryRuns = append(f.dryRuns, dryRun)
	f.mu.Unlock()
	return f.reload()
}

// reasonsError is a refusal with reasons, as dmvpnd's reload gives.
type reasonsError struct {
	msg     string
	reasons []string
}

func (e reasonsError) Error() string     { return e.msg }
func (e reasonsError) Reasons() []string { return e.reasons }

// serve starts a server for d on a socket in a temporary directory.
func serve(t *testing.T, d Daemon) (*Server, *Client, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "run", "dmvpnd.sock")
	s := NewServer(d, nil)
	if err := s.ListenUnix(sock, OwnerOnly); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, NewClient(sock), sock
}

func TestEndpoints(t *testing.T) {
	p := newPair(t)
	d := &fakeDaemon{eng: p.spoke, dev: p.spokeDev, reload: func() ([]string, error) { return []string{"holding time 2h0m0s → 10m0s"}, nil }}
	_, c, sock := serve(t, d)
	ctx := context.Background()

	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("socket mode %v, want a socket with 0600", fi.Mode())
	}

	var st Status
	if err := c.Get(ctx, PathStatus, &st); err != nil {
		t.Fatal(err)
	}
	if st.Node != "spoke1" || st.NHRP.Interface != "gre-spoke" || st.NHRP.Address != netip.PrefixFrom(spokeAddr, 16) || st.NHRP.Role != "spoke" {
		t.Errorf("status: %+v", st)
	}
	var cache CacheResponse
	if err := c.Get(ctx, PathCache, &cache); err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, e := range cache.Entries {
		types = append(types, e.Type.String()+" "+e.Proto.String())
	}
	want := []string{"nhs 172.16.0.1/32", "local 172.16.1.1/32", "static 172.16.9.9/32"}
	if diff := cmp.Diff(want, types); diff != "" {
		t.Errorf("cache (-want +got):\n%s", diff)
	}
	// The same answer read entry by entry as it streams, and copied raw.
	var each []nhrp.CacheEntry
	iface, err := c.CacheEach(ctx, PathCache, func(iface string, en nhrp.CacheEntry) error {
		if iface != cache.Interface {
			t.Errorf("CacheEach: interface %q before entry %v, want %q", iface, en.Proto, cache.Interface)
		}
		each = append(each, en)
		return nil
	})
	if err != nil || iface != cache.Interface {
		t.Fatalf("CacheEach: %q %v", iface, err)
	}
	if diff := cmp.Diff(cache.Entries, each, cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{})); diff != "" {
		t.Errorf("CacheEach (-Get +CacheEach):\n%s", diff)
	}
	var raw bytes.Buffer
	var copied CacheResponse
	if err := c.Copy(ctx, PathShortcuts, &raw); err != nil || json.Unmarshal(raw.Bytes(), &copied) != nil || copied.Entries == nil || len(copied.Entries) != 0 {
		t.Errorf("Copy of no shortcuts: %v %q", err, raw.String())
	}
	var nhs NHSResponse
	if err := c.Get(ctx, PathNHS, &nhs); err != nil {
		t.Fatal(err)
	}
	if len(nhs.Servers) != 1 || nhs.Servers[0].State != nhrp.NHSUp || nhs.Servers[0].NBMA != hubNBMA {
		t.Errorf("nhs: %+v", nhs)
	}
	var peers PeersResponse
	if err := c.Get(ctx, PathPeers, &peers); err != nil {
		t.Fatal(err)
	}
	if len(peers.Peers) != 2 || peers.Peers[0].NBMA != hubNBMA || peers.Peers[0].State != "up" || peers.Peers[0].Role != "nhs" {
		t.Errorf("peers: %+v", peers)
	}
	var tr TrafficResponse
	if err := c.Get(ctx, PathTraffic, &tr); err != nil {
		t.Fatal(err)
	}
	if tr.NHRP.Sent["Registration Request"] < 1 || tr.NHRP.Received["Registration Reply"] < 1 || tr.Dataplane == nil || tr.Dataplane.NHRPRx < 1 {
		t.Errorf("traffic: %+v", tr)
	}
	var sc CacheResponse
	if err := c.Get(ctx, PathShortcuts, &sc); err != nil || len(sc.Entries) != 0 {
		t.Errorf("shortcuts: %+v %v", sc, err)
	}
	var rc RunningConfigResponse
	if err := c.Get(ctx, PathRunningConfig, &rc); err != nil || rc.YAML != "node: spoke1\n" || rc.File != "/etc/dmvpn/dmvpnd.yaml" {
		t.Errorf("running-config: %+v %v", rc, err)
	}
	var v VersionResponse
	if err := c.Get(ctx, PathVersion, &v); err != nil || v.Daemon.Go != runtime.Version() {
		t.Errorf("version: %+v %v", v, err)
	}
	var rr ReloadResponse
	if err := c.Post(ctx, PathReload, struct{}{}, &rr); err != nil || len(rr.Changes) != 1 {
		t.Errorf("reload: %+v %v", rr, err)
	}
	// A dry run says so, and the daemon is asked for one.
	rr = ReloadResponse{}
	if err := c.Post(ctx, PathReload, ReloadRequest{DryRun: true}, &rr); err != nil || !rr.DryRun || len(rr.Changes) != 1 {
		t.Errorf("dry-run reload: %+v %v", rr, err)
	}
	d.mu.Lock()
	if !slices.Equal(d.dryRuns, []bool{false, true}) {
		t.Errorf("the daemon was asked for dry runs %v, want [false true]", d.dryRuns)
	}
	d.mu.Unlock()
	d.reload = func() ([]string, error) { return nil, errors.New("reload refused, nothing changed: line 3: bogus") }
	err = c.Post(ctx, PathReload, struct{}{}, &rr)
	var api *APIError
	if !errors.As(err, &api) || api.Status != 409 || api.Msg != "reload refused, nothing changed: line 3: bogus" {
		t.Errorf("refused reload: %v", err)
	}
	// A refusal's reasons come one by one.
	d.reload = func() ([]string, error) {
		return nil, reasonsError{"reload refused, nothing changed: 2 errors", []string{"line 3: bogus", "line 4: worse"}}
	}
	err = c.Post(ctx, PathReload, ReloadRequest{DryRun: true}, &rr)
	if !errors.As(err, &api) || api.Status != 409 || !slices.Equal(api.Reasons, []string{"line 3: bogus", "line 4: worse"}) {
		t.Errorf("refused reload with reasons: %+v", err)
	}
	// An unknown field is a bad request, not a reload.
	if err := c.Post(ctx, PathReload, map[string]bool{"dryrun": true}, &rr); !errors.As(err, &api) || api.Status != 400 {
		t.Errorf("bad reload body: %v", err)
	}
}

func TestClear(t *testing.T) {
	p := newPair(t)
	_, c, _ := serve(t, &fakeDaemon{eng: p.hub})
	ctx := context.Background()
	var r ClearResponse
	err := c.Post(ctx, PathClear, ClearRequest{}, &r)
	var api *APIError
	if !errors.As(err, &api) || api.Status != 400 {
		t.Errorf("clear with nothing selected: %v", err)
	}
	if err := c.Post(ctx, PathClear, map[string]any{"dynamic": true, "bogus": 1}, &r); !errors.As(err, &api) || api.Status != 400 {
		t.Errorf("clear with an unknown field: %v", err)
	}
	if err := c.Post(ctx, PathClear, ClearRequest{Peer: spokeAddr}, &r); err != nil || r.Cleared != 1 {
		t.Fatalf("clear peer: %+v %v", r, err)
	}
	// Static entries are never cleared.
	_, sc, _ := serve(t, &fakeDaemon{eng: p.spoke})
	if err := sc.Post(ctx, PathClear, ClearRequest{Peer: netip.MustParseAddr("172.16.9.9"), Dynamic: true}, &r); err != nil || r.Cleared != 0 {
		t.Errorf("clearing a static entry: %+v %v", r, err)
	}
}

func TestEvents(t *testing.T) {
	p := newPair(t)
	_, c, _ := serve(t, &fakeDaemon{eng: p.spoke})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan nhrp.Event, 16)
	done := make(chan error, 1)
	go func() {
		done <- c.Events(ctx, true, func(ev nhrp.Event) error { got <- ev; return nil })
	}()
	// Wait for the subscription, then make the spoke register again.
	deadline := time.After(5 * time.Second)
	for seen := false; !seen; {
		if err := p.spoke.Reregister(context.Background(), "test"); err != nil {
			t.Fatal(err)
		}
		select {
		case ev := <-got:
			if ev.Kind == nhrp.EventPacket && ev.Packet != nil && ev.Packet.Dir == "out" {
				seen = true
			}
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			t.Fatal("no packet event streamed")
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Events after cancel: %v", err)
	}
}

func TestStartingAndErrors(t *testing.T) {
	d := &fakeDaemon{}
	s, c, sock := serve(t, d)
	ctx := context.Background()
	var st Status
	err := c.Get(ctx, PathStatus, &st)
	var api *APIError
	if !errors.As(err, &api) || api.Status != 503 || !strings.Contains(api.Msg, "starting") {
		t.Errorf("status while starting: %v", err)
	}
	if err := c.Get(ctx, "/v1/nothing", &st); !errors.As(err, &api) || api.Status != 404 || api.Msg != "no such API call: GET /v1/nothing" {
		t.Errorf("unknown path: %v", err)
	}
	// A second daemon on the same socket is refused; a stale file is not.
	if err := NewServer(d, nil).ListenUnix(sock, OwnerOnly); err == nil || !strings.Contains(err.Error(), "another dmvpnd") {
		t.Errorf("second listener: %v", err)
	}
	s.Close()
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file after Close: %v", err)
	}
	err = c.Get(ctx, PathStatus, &st)
	if !errors.Is(err, ErrUnreachable) || err.Error() != "cannot reach dmvpnd at "+sock+": connect: no such file or directory" {
		t.Errorf("unreachable: %v", err)
	}
	stale, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	s2 := NewServer(d, nil)
	if err := s2.ListenUnix(sock, OwnerOnly); err != nil {
		t.Errorf("listening over a stale socket: %v", err)
	}
	s2.Close()
}

// subscribeWatch is an Engine whose Subscribe says when it was called.
type subscribeWatch struct {
	Engine
	subscribed chan struct{}
}

func (w subscribeWatch) Subscribe(buffer int, packets bool) (<-chan nhrp.Event, func()) {
	ch, cancel := w.Engine.Subscribe(buffer, packets)
	close(w.subscribed)
	return ch, cancel
}

// TestCloseEndsStreams checks that Close ends event streams and leaves no
// goroutine behind.
func TestCloseEndsStreams(t *testing.T) {
	p := newPair(t)
	ignore := goleak.IgnoreCurrent()
	watch := subscribeWatch{Engine: p.spoke, subscribed: make(chan struct{})}
	s, c, _ := serve(t, &fakeDaemon{eng: watch})
	done := make(chan error, 1)
	go func() {
		done <- c.Events(context.Background(), false, func(nhrp.Event) error { return nil })
	}()
	// Close only once the server holds the stream.
	select {
	case <-watch.subscribed:
	case <-time.After(5 * time.Second):
		t.Fatal("the event stream did not reach the engine")
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Errorf("the stream ended without an error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end the event stream")
	}
	c.http.CloseIdleConnections()
	goleak.VerifyNone(t, ignore)
}
