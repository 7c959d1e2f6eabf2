package ipsec

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"
)

// Credentials are a node's credentials read from their files and checked
// to belong together, ready to be loaded into charon (LoadCredentials) or
// kept to load back (a reload rolled back).
type Credentials struct{ cs *credSet }

// Certificate describes this node's certificate in the set (zero for an
// empty set).
func (c *Credentials) Certificate() CertInfo {
	if c == nil || c.cs == nil {
		return CertInfo{}
	}
	return c.cs.own
}

// Same reports whether two sets hold the same certificates and key; an
// empty set (nil, or the zero value) is the same only as itself.
func (c *Credentials) Same(o *Credentials) bool {
	if c == nil || o == nil || c.cs == nil || o.cs == nil {
		return c == o
	}
	return c.cs.sameContents(o.cs)
}

// ReadCredentials reads the credential files again and checks them as
// dmvpnd --check does (unless started with --unchecked-credentials);
// nothing is loaded. An error names what is wrong (a key that is not the
// certificate's, a file half written, an expired certificate, an OU=GRE=
// that is not the tunnel address).
func (m *Manager) ReadCredentials() (*Credentials, error) {
	cs, err := readCreds(m.cfg, m.hub)
	if err != nil {
		return nil, err
	}
	return &Credentials{cs: cs}, nil
}

// Credentials returns the credentials in force (the last set loaded).
func (m *Manager) Credentials() *Credentials {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.creds == nil {
		return nil
	}
	return &Credentials{cs: m.creds}
}

// LoadCredentials loads a set into charon with every connection that
// carries it, and only then makes it the set in force: a load that fails
// leaves the set in force as it was (charon may hold part of the new one:
// the caller loads the old set back, and a charon that comes back gets the
// set in force), and the file watch tries again. Nothing else happens
// until CredentialsCommitted: a reload that loads a set and is rolled
// back later loads the old one back and has ended no SA.
func (m *Manager) LoadCredentials(ctx context.Context, c *Credentials) error {
	m.mu.Lock()
	specs := make([]connSpec, 0, len(m.loaded))
	for _, s := range m.loaded {
		specs = append(specs, s)
	}
	cmd := m.cmd
	connected := m.connected
	m.mu.Unlock()
	if cmd == nil || !connected {
		return errNotConnected
	}
	if err := loadCreds(ctx, cmd, c.cs); err != nil {
		return fmt.Errorf("ipsec: loading the credentials: %w", err)
	}
	for _, s := range specs {
		if err := m.loadConnWith(ctx, s, c.cs); err != nil {
			return fmt.Errorf("ipsec: loading connection %s with the credentials: %w", s.name, err)
		}
	}
	m.mu.Lock()
	m.creds = c.cs
	m.refusedCreds = nil
	m.mu.Unlock()
	return nil
}

// CredentialsCommitted finishes putting a set loaded by LoadCredentials in
// force, once nothing can take it back (the file watch at once, a reload
// after every step succeeded): the peers a new CRL revokes are ended, and
// a spoke whose own certificate changed from old's sets its SAs up again
// with it.
func (m *Manager) CredentialsCommitted(ctx context.Context, old, c *Credentials) {
	if c == nil || c.cs == nil {
		return
	}
	if c.cs.crls != nil {
		m.revokeSweep(ctx) // peers a new list revokes
	}
	renewed := old != nil && old.cs != nil && old.cs.cert != c.cs.cert
	m.log.Info("credentials loaded", zap.String("certificate", c.cs.own.Subject), zap.String("serial", c.cs.own.Serial),
		zap.Time("expires", c.cs.own.NotAfter), zap.Bool("renewed", renewed))
	m.checkExpiry(time.Now())
	if renewed && !m.hub {
		m.mu.Lock()
		specs := make([]connSpec, 0, len(m.loaded))
		for _, s := range m.loaded {
			specs = append(specs, s)
		}
		m.mu.Unlock()
		m.bg.Add(1)
		go func() {
			defer m.bg.Done()
			m.reauthenticate(specs)
		}()
	}
}

// CredentialsRefused notes a set a reload loaded and then rolled back:
// the file watch leaves those files alone until they change again
// (otherwise it would load within 5 s what the reload answered it had not
// changed).
func (m *Manager) CredentialsRefused(c *Credentials) {
	if c == nil || c.cs == nil {
		return
	}
	m.mu.Lock()
	m.refusedCreds = c.cs
	m.mu.Unlock()
}

// ReloadCredentials reads the credential files again and loads them: the
// steps above at once.
func (m *Manager) ReloadCredentials(ctx context.Context) error {
	old := m.Credentials()
	c, err := m.ReadCredentials()
	if err != nil {
		return err
	}
	if err := m.LoadCredentials(ctx, c); err != nil {
		return err
	}
	m.CredentialsCommitted(ctx, old, c)
	return nil
}

// reloadCredsIfChanged is the file watch: when a credential file changed
// (a certificate rotated without a restart) the set is read, checked as
// dmvpnd --check and a reload check it, and loaded. A set that does not
// check (the certificate replaced, the key not yet; expired, not yet
// valid, another node's OU=GRE=) or does not load is not taken: the files
// still differ from the set in force, so the next look tries again. A
// failure is logged once until it changes. A set a reload rolled back is
// left alone until its files change.
func (m *Manager) reloadCredsIfChanged(ctx context.Context) {
	m.mu.Lock()
	cur, refused := m.creds, m.refusedCreds
	m.mu.Unlock()
	if cur == nil || !cur.changed() || (refused != nil && !refused.changed()) {
		return
	}
	c, err := m.ReadCredentials()
	if err == nil && c.cs.sameContents(cur) {
		// Touched, not changed: note the new times only.
		m.mu.Lock()
		if m.creds == cur {
			m.creds = c.cs
		}
		m.mu.Unlock()
		return
	}
	if err == nil {
		if err = m.LoadCredentials(ctx, c); err == nil {
			m.CredentialsCommitted(ctx, &Credentials{cs: cur}, c)
		}
	}
	m.logMu.Lock()
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	again := msg != "" && msg == m.rotateErr
	m.rotateErr = msg
	m.logMu.Unlock()
	switch {
	case err == nil:
		m.log.Info("credential files changed: reloaded")
	case !again:
		m.log.Warn("credential files changed but cannot be loaded yet; the credentials in force stay, trying again every 5 s", zap.Error(err))
	}
}
