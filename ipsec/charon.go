package ipsec

import (
	"context"

	"go.uber.org/zap"
)

// Charon is a charon started and supervised the way the manager runs a
// managed one (its own mount namespace, a generated strongswan.conf in
// cfg.Dir, restarted when it dies), for tools that drive charon over VICI
// themselves: the IPsec benchmark's spoke simulator.
type Charon struct {
	c      *charon
	cancel context.CancelFunc
	socket string
}

// StartCharon starts charon and returns once its VICI socket answers.
func StartCharon(ctx context.Context, cfg Config, mode Mode, log *zap.Logger) (*Charon, error) {
	cfg.Managed = true
	cfg = cfg.withDefaults()
	if log == nil {
		log = zap.NewNop()
	}
	c := newCharon(cfg, mode, log)
	if err := c.start(ctx); err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	go c.supervise(sctx)
	return &Charon{c: c, cancel: cancel, socket: cfg.Socket}, nil
}

// Socket is the VICI socket.
func (c *Charon) Socket() string { return c.socket }

// PID is charon's process id (0 while it is restarting).
func (c *Charon) PID() int { return c.c.pid() }

// Stop ends charon (SIGTERM: it deletes its SAs at the peers).
func (c *Charon) Stop() {
	c.cancel()
	c.c.stop()
}
