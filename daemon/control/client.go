package control

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/opendmvpn/dmvpn/ipsec"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// Client calls the API over the unix socket, or over TCP (TLS) with a
// token or a client certificate.
type Client struct {
	socket string // the socket path, or the TCP address
	base   string // URL prefix
	token  string
	http   *http.Client
}

// NewClient returns a client of the daemon listening at socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableCompression: true,
	}
	return &Client{socket: socket, base: "http://dmvpnd", http: &http.Client{Transport: tr}}
}

// RemoteOptions configure a client of the API on TCP (control.listen).
type RemoteOptions struct {
	// CAs verify the server's certificate (nil: the system's roots).
	CAs *x509.CertPool
	// Certificate is the client's certificate (mTLS), if any.
	Certificate *tls.Certificate
	// Token is the bearer token, if any.
	Token string
}

// NewRemoteClient returns a client of the API at addr (host:port) over
// TLS.
func NewRemoteClient(addr string, o RemoteOptions) *Client {
	tc := &tls.Config{RootCAs: o.CAs, MinVersion: tls.VersionTLS12}
	if o.Certificate != nil {
		tc.Certificates = []tls.Certificate{*o.Certificate}
	}
	tr := &http.Transport{TLSClientConfig: tc, DisableCompression: true}
	return &Client{socket: addr, base: "https://" + addr, token: o.Token, http: &http.Client{Transport: tr}}
}

// Socket returns the socket path (or the TCP address) of the daemon.
func (c *Client) Socket() string { return c.socket }

// newRequest makes a request to the API, with the token when there is one.
func (c *Client) newRequest(ctx context.Context, method, path string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	return req, nil
}

// ErrUnreachable is wrapped by errors of a daemon that cannot be reached.
var ErrUnreachable = errors.New("cannot reach dmvpnd")

// unreachable words a connection failure as one line: the socket path and
// the system's reason ("connect: no such file or directory").
func (c *Client) unreachable(err error) error {
	var se *os.SyscallError
	if errors.As(err, &se) {
		err = se
	}
	return fmt.Errorf("%w at %s: %w", ErrUnreachable, c.socket, err)
}

// APIError is an error the daemon answered with.
type APIError struct {
	Status int
	Msg    string
	// Reasons are a refused reload's reasons, one each.
	Reasons []string
}

// Error returns the daemon's message.
func (e *APIError) Error() string { return e.Msg }

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	resp, err := c.send(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("reading the answer of %s: %w", path, err)
	}
	return nil
}

// send makes a call (a JSON body when body is set) and returns the answer
// of a call that succeeded; the caller closes its body. A refusal comes
// back as an *APIError, a daemon that cannot be reached as such.
func (c *Client) send(ctx context.Context, method, path string, body io.Reader) (*http.Response, error) {
	req, err := c.newRequest(ctx, method, path, body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, c.unreachable(err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, readError(resp)
	}
	return resp, nil
}

func readError(resp *http.Response) error {
	var e ErrorResponse
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if json.Unmarshal(b, &e) != nil || e.Error == "" {
		e.Error = fmt.Sprintf("dmvpnd answered %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return &APIError{Status: resp.StatusCode, Msg: e.Error, Reasons: e.Reasons}
}

// CacheEach reads a CacheResponse (PathCache, PathShortcuts) entry by
// entry, calling fn with the interface and each entry as it is decoded,
// so that a large cache is never held whole; it returns the interface
// named.
func (c *Client) CacheEach(ctx context.Context, path string, fn func(iface string, en nhrp.CacheEntry) error) (string, error) {
	resp, err := c.send(ctx, http.MethodGet, path, nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	iface := ""
	bad := func(err error) error { return fmt.Errorf("reading the answer of %s: %w", path, err) }
	dec := json.NewDecoder(bufio.NewReaderSize(resp.Body, 64<<10))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return "", bad(fmt.Errorf("not an object (%v)", err))
	}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return "", bad(err)
		}
		switch t {
		case "interface":
			if err := dec.Decode(&iface); err != nil {
				return "", bad(err)
			}
		case "entries":
			if t, err := dec.Token(); err != nil || (t != json.Delim('[') && t != nil) {
				return "", bad(fmt.Errorf("entries: not a list (%v)", err))
			} else if t == nil {
				continue
			}
			for dec.More() {
				var en nhrp.CacheEntry
				if err := dec.Decode(&en); err != nil {
					return "", bad(err)
				}
				if err := fn(iface, en); err != nil {
					return "", err
				}
			}
			if _, err := dec.Token(); err != nil {
				return "", bad(err)
			}
		default:
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return "", bad(err)
			}
		}
	}
	return iface, nil
}

// Copy calls a GET endpoint and copies its JSON answer to w as it comes
// (a large table is never held whole).
func (c *Client) Copy(ctx context.Context, path string, w io.Writer) error {
	resp, err := c.send(ctx, http.MethodGet, path, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(w, resp.Body); err != nil {
		return fmt.Errorf("reading the answer of %s: %w", path, err)
	}
	return nil
}

// Get calls a GET endpoint and decodes its answer into out.
func (c *Client) Get(ctx context.Context, path string, out any) error {
	return c.do(ctx, http.MethodGet, path, nil, out)
}

// Post calls a POST endpoint with in as the body.
func (c *Client) Post(ctx context.Context, path string, in, out any) error {
	return c.do(ctx, http.MethodPost, path, in, out)
}

// Events streams engine events to fn until ctx ends, the daemon stops or
// fn returns an error.
func (c *Client) Events(ctx context.Context, packets bool, fn func(nhrp.Event) error) error {
	path := PathEvents
	if packets {
		path += "?packets=true"
	}
	return stream(c, ctx, path, fn)
}

// CryptoLog streams charon's IKE log (the lines about peer, when valid)
// to fn until ctx ends, the daemon stops or fn returns an error.
func (c *Client) CryptoLog(ctx context.Context, peer netip.Addr, fn func(ipsec.LogLine) error) error {
	path := PathCryptoLog
	if peer.IsValid() {
		path += "?peer=" + url.QueryEscape(peer.String())
	}
	return stream(c, ctx, path, fn)
}

// stream reads a stream of JSON lines from path into fn.
func stream[T any](c *Client, ctx context.Context, path string, fn func(T) error) error {
	req, err := c.newRequest(ctx, http.MethodGet, path, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return c.unreachable(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return readError(resp)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var ev T
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return fmt.Errorf("reading %s: %w", path, err)
		}
		if err := fn(ev); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading %s: %w", path, err)
	}
	return errors.New("dmvpnd ended the stream (stopping, or charon went away)")
}

// Ping waits until the daemon answers /v1/status or timeout passes.
func (c *Client) Ping(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		var st Status
		err := c.Get(ctx, PathStatus, &st)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}
