package config

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v4"
)

// MinTokenLen is the shortest bearer token control.token_file may hold.
const MinTokenLen = 16

// controlFields decodes the control section.
func (d *decoder) controlFields(c *Control) fields {
	file := func(out *string) func(*yaml.Node, string) {
		return func(n *yaml.Node, p string) { d.file(n, p, out) }
	}
	return fields{
		"socket": func(n *yaml.Node, p string) { d.path(n, p, &c.Socket) },
		"listen": func(n *yaml.Node, p string) { d.hostPort(n, p, &c.Listen) },
		"group": func(n *yaml.Node, p string) {
			if !d.text(n, p, &c.Group) {
				return
			}
			gid, err := lookupGroup(c.Group)
			if err != nil {
				d.errorf(resolve(n), p, "%v", err)
				return
			}
			c.GID = gid
		},
		"token_file": func(n *yaml.Node, p string) {
			if d.file(n, p, &c.TokenFile) {
				d.checkToken(n, p, c.TokenFile)
			}
		},
		"tls_cert":  file(&c.TLSCert),
		"tls_key":   file(&c.TLSKey),
		"client_ca": file(&c.ClientCA),
	}
}

// lookupGroup resolves a group name or number to its gid.
func lookupGroup(g string) (int, error) {
	if n, err := strconv.Atoi(g); err == nil && n >= 0 {
		return n, nil
	}
	gr, err := user.LookupGroup(g)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(gr.Gid)
}

// checkToken refuses a token file others can read, or one too short to
// be a secret.
func (d *decoder) checkToken(n *yaml.Node, p, path string) {
	st, err := os.Stat(path)
	if err != nil {
		d.errorf(resolve(n), p, "%v", err)
		return
	}
	if st.Mode().Perm()&0o077 != 0 {
		d.errorf(resolve(n), p, "%s has mode %04o: others can read the token (chmod 0600)", path, st.Mode().Perm())
		return
	}
	tok, err := ReadToken(path)
	if err != nil {
		d.errorf(resolve(n), p, "%v", err)
	} else if len(tok) < MinTokenLen {
		d.errorf(resolve(n), p, "%s holds a token of %d bytes: use at least %d (like: head -c 32 /dev/urandom | base64)", path, len(tok), MinTokenLen)
	}
}

// ReadToken reads a bearer token file: its contents without surrounding
// white space.
func ReadToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// checkControl checks the control section as a whole: the API on TCP is
// served over TLS only, to callers who authenticate.
func (c *Config) checkControl(d *decoder) {
	k := &c.Control
	if k.Listen == "" {
		for _, f := range []struct {
			key string
			set bool
		}{{"token_file", k.TokenFile != ""}, {"tls_cert", k.TLSCert != ""}, {"tls_key", k.TLSKey != ""}, {"client_ca", k.ClientCA != ""}} {
			if f.set {
				d.errorAt("control."+f.key, "only used with control.listen (the API on TCP)")
			}
		}
		return
	}
	if d.failed("control") {
		return
	}
	if k.TLSCert == "" || k.TLSKey == "" {
		d.errorAt("control.listen", "the API on TCP is served over TLS only: set control.tls_cert and control.tls_key")
	} else if _, err := tls.LoadX509KeyPair(k.TLSCert, k.TLSKey); err != nil {
		d.errorAt("control.tls_key", "%v", err)
	}
	if k.TokenFile == "" && k.ClientCA == "" {
		d.errorAt("control.listen", "the API on TCP needs authentication: control.token_file (a bearer token) or control.client_ca (client certificates)")
	}
	if k.ClientCA != "" {
		if _, err := LoadCAs(k.ClientCA); err != nil {
			d.errorAt("control.client_ca", "%v", err)
		}
	}
}

// LoadCAs reads a PEM file of CA certificates into a pool.
func LoadCAs(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, errNoCerts(path)
	}
	return pool, nil
}

type errNoCerts string

func (e errNoCerts) Error() string { return string(e) + " holds no PEM certificate" }

// ControlSocket returns the control socket a configuration file names
// (control.socket; DefaultSocket when it names none), reading that
// setting only: what dmvpnctl -c FILE connects to, so that a service
// manager's reload reaches a dmvpnd whose file moved its socket.
func ControlSocket(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	var f struct {
		Control struct {
			Socket string `yaml:"socket"`
		} `yaml:"control"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	switch s := f.Control.Socket; {
	case s == "":
		return DefaultSocket, nil
	case !strings.HasPrefix(s, "/"):
		return "", fmt.Errorf("%s: control.socket %q is not an absolute path", path, s)
	default:
		return s, nil
	}
}
