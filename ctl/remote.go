package ctl

import (
	"crypto/tls"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/opendmvpn/dmvpn/daemon/config"
	"github.com/opendmvpn/dmvpn/daemon/control"
)

// Environment variables of the remote options.
const (
	EnvServer    = "DMVPNCTL_SERVER"
	EnvTokenFile = "DMVPNCTL_TOKEN_FILE"
)

// Remote says how to reach dmvpnd's API on TCP (control.listen) instead
// of its unix socket: over TLS, with a bearer token or a client
// certificate.
type Remote struct {
	// Server is host:port; empty uses the unix socket.
	Server string
	// TokenFile holds the bearer token; CA verifies the server's
	// certificate (empty: the system's roots); Cert and Key are a client
	// certificate (mTLS).
	TokenFile, CA, Cert, Key string
}

// addFlags binds the remote flags.
func (r *Remote) addFlags(c *cobra.Command) {
	f := c.PersistentFlags()
	f.StringVar(&r.Server, "server", os.Getenv(EnvServer), "dmvpnd's API on TCP, host:port, instead of the socket (env "+EnvServer+")")
	f.StringVar(&r.TokenFile, "token-file", os.Getenv(EnvTokenFile), "file holding the API's bearer token (env "+EnvTokenFile+")")
	f.StringVar(&r.CA, "ca", "", "CA certificate(s) that signed dmvpnd's TLS certificate")
	f.StringVar(&r.Cert, "cert", "", "client certificate (mTLS)")
	f.StringVar(&r.Key, "key", "", "client certificate's key")
}

// fromFlags reads the remote flags of a parsed command.
func remoteFromFlags(c *cobra.Command) Remote {
	get := func(n string) string { v, _ := c.Flags().GetString(n); return v }
	return Remote{Server: get("server"), TokenFile: get("token-file"), CA: get("ca"), Cert: get("cert"), Key: get("key")}
}

// client returns a client of the remote API, its files read.
func (r Remote) client() (*control.Client, error) {
	var o control.RemoteOptions
	if r.CA != "" {
		pool, err := config.LoadCAs(r.CA)
		if err != nil {
			return nil, fmt.Errorf("--ca: %w", err)
		}
		o.CAs = pool
	}
	if r.Cert != "" || r.Key != "" {
		c, err := tls.LoadX509KeyPair(r.Cert, r.Key)
		if err != nil {
			return nil, fmt.Errorf("--cert/--key: %w", err)
		}
		o.Certificate = &c
	}
	if r.TokenFile != "" {
		tok, err := config.ReadToken(r.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("--token-file: %w", err)
		}
		o.Token = tok
	}
	if o.Token == "" && o.Certificate == nil {
		return nil, fmt.Errorf("--server %s: give --token-file or --cert and --key (the API on TCP needs authentication)", r.Server)
	}
	return control.NewRemoteClient(r.Server, o), nil
}
