package control

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opendmvpn/dmvpn/nhrp"
)

// subscribeCount is an Engine whose Subscribe reports each call.
type subscribeCount struct {
	Engine
	subscribed chan struct{}
}

func (w subscribeCount) Subscribe(buffer int, packets bool) (<-chan nhrp.Event, func()) {
	ch, cancel := w.Engine.Subscribe(buffer, packets)
	w.subscribed <- struct{}{}
	return ch, cancel
}

// TestStreamsBounded: beyond the limit an event stream is refused with
// 429 and a message that says what to do, without reaching the engine;
// once a stream ends, its place is free again.
func TestStreamsBounded(t *testing.T) {
	p := newPair(t)
	watch := subscribeCount{Engine: p.spoke, subscribed: make(chan struct{}, 8)}
	s, c, _ := serve(t, &fakeDaemon{eng: watch})
	s.setMaxStreams(2)
	open := func() (context.CancelFunc, chan error) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- c.Events(ctx, false, func(nhrp.Event) error { return nil }) }()
		return cancel, done
	}
	waitSubscribed := func() {
		t.Helper()
		select {
		case <-watch.subscribed:
		case <-time.After(5 * time.Second):
			t.Fatal("the event stream did not reach the engine")
		}
	}
	cancel1, done1 := open()
	waitSubscribed()
	cancel2, done2 := open()
	defer func() { cancel2(); <-done2 }()
	waitSubscribed()

	// Without the limit this stream would run until the timeout (nil).
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := c.Events(ctx, false, func(nhrp.Event) error { return nil })
	var api *APIError
	if !errors.As(err, &api) || api.Status != http.StatusTooManyRequests || !strings.Contains(api.Msg, "2 debug streams") ||
		!strings.Contains(api.Msg, "end one") {
		t.Fatalf("a third stream with a limit of 2: %v", err)
	}
	select {
	case <-watch.subscribed:
		t.Fatal("the refused stream subscribed to the engine")
	default:
	}

	cancel1()
	if err := <-done1; err != nil {
		t.Fatalf("first stream after cancel: %v", err)
	}
	// The server counts the stream out when its handler returns, after
	// the client saw the end: try until a new one is taken.
	deadline := time.Now().Add(5 * time.Second)
	for {
		cancel3, done3 := open()
		select {
		case <-watch.subscribed:
			cancel3()
			<-done3
			return
		case err := <-done3:
			cancel3()
			if !errors.As(err, &api) || api.Status != http.StatusTooManyRequests {
				t.Fatalf("a stream after one ended: %v", err)
			}
			if time.Now().After(deadline) {
				t.Fatal("the ended stream's place was not freed within 5 s")
			}
		}
	}
}

// TestIdleConnectionsClosed: the server closes a keep-alive connection
// idle for IdleTimeout (1 minute in production; 100 ms here), and reads
// request headers with a timeout.
func TestIdleConnectionsClosed(t *testing.T) {
	s := NewServer(&fakeDaemon{}, nil)
	if s.srv.IdleTimeout != idleTimeout || idleTimeout <= 0 || s.srv.ReadHeaderTimeout <= 0 {
		t.Fatalf("IdleTimeout %v, ReadHeaderTimeout %v: want both set", s.srv.IdleTimeout, s.srv.ReadHeaderTimeout)
	}
	s.srv.IdleTimeout = 100 * time.Millisecond
	sock := filepath.Join(t.TempDir(), "dmvpnd.sock")
	if err := s.ListenUnix(sock, OwnerOnly); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "GET "+PathVersion+" HTTP/1.1\r\nHost: dmvpnd\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Close {
		t.Fatal("the server closed the connection after the response: nothing to test")
	}
	idleSince := time.Now()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("idle connection: %v, want it closed by the server (EOF)", err)
	}
	if d := time.Since(idleSince); d < 90*time.Millisecond {
		t.Errorf("closed after %v idle, before IdleTimeout", d)
	}
}
