package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/opendmvpn/dmvpn/cmd/dmvpnd/cli"
	"github.com/opendmvpn/dmvpn/daemon"
	"github.com/opendmvpn/dmvpn/daemon/config"
	"github.com/opendmvpn/dmvpn/daemon/control"
	"github.com/opendmvpn/dmvpn/daemon/metrics"
	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/internal/version"
)

// DefaultConfig is the configuration file read without -c.
const DefaultConfig = cli.DefaultConfig

// Main runs dmvpnd with the command line args (without the program name)
// and returns the exit status: 0 after a clean stop or a valid --check, 1
// on an error, 2 on a bad command line.
func Main(args []string, stdout, stderr io.Writer) int {
	fs, cl := cli.NewFlagSet(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			cli.PrintUsage(stdout, fs)
			return 0
		}
		cli.ShortUsage(stderr, fs)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "dmvpnd: unexpected argument %q\n", fs.Arg(0))
		cli.ShortUsage(stderr, fs)
		return 2
	}
	path, check, keep, unchecked := &cl.Config, &cl.Check, &cl.KeepRoutes, &cl.UncheckedCredentials
	if cl.Version {
		v := version.Get()
		fmt.Fprintf(stdout, "dmvpnd %s (%s %s/%s)\n", v.Version, v.Go, v.OS, v.Arch)
		return 0
	}
	opts := config.Options{UncheckedCredentials: *unchecked}
	cfg, err := config.LoadWith(*path, opts)
	if err != nil {
		fmt.Fprintf(stderr, "dmvpnd: %v\n", err)
		return 1
	}
	rt := config.Runtime{KeepRoutes: *keep, UncheckedCredentials: *unchecked}
	dcfg := cfg.Daemon(rt)
	if *check {
		if _, err := daemon.New(dcfg, nil); err != nil {
			fmt.Fprintf(stderr, "dmvpnd: %s: %v\n", *path, err)
			return 1
		}
		for _, w := range cfg.Warnings {
			fmt.Fprintf(stderr, "dmvpnd: %s: warning: %v\n", *path, w)
		}
		if cfg.IPsecOff {
			fmt.Fprintf(stderr, "dmvpnd: %s: warning: %s\n", *path, WarnIPsecOff)
		}
		fmt.Fprintf(stdout, "%s: configuration OK (node %s, %s)\n", *path, cfg.Node, cfg.Role)
		return 0
	}
	log, level, err := newLogger(cfg.Logging, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "dmvpnd: %v\n", err)
		return 1
	}
	defer func() { _ = log.Sync() }()
	log = log.With(zap.String("node", cfg.Node))
	for _, w := range cfg.Warnings {
		log.Warn("configuration: "+w.Msg, zap.String("field", w.Path), zap.Int("line", w.Line))
	}
	if err := run(*path, cfg, rt, opts, log, level); err != nil {
		log.Error("dmvpnd stopped with an error", zap.Error(err))
		return 1
	}
	return 0
}

// run runs the node until SIGTERM or SIGINT.
func run(path string, cfg *config.Config, rt config.Runtime, opts config.Options, log *zap.Logger, level zap.AtomicLevel) error {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	sd := newNotifier()
	notify := func(err error) {
		if err != nil {
			log.Warn("telling the service manager", zap.Error(err))
		}
	}

	var app *App
	m := metrics.New(metricsSource{&app})
	d, err := daemon.New(cfg.Daemon(rt), log.Named("daemon"), daemon.WithObserver(m),
		daemon.WithFirewallRollback(func(src any) { app.firewallRolledBack(src) }))
	if err != nil {
		return err
	}
	app = newApp(path, cfg, rt, daemonNode{d}, log, level)
	app.load = func(p string) (*config.Config, error) { return config.LoadWith(p, opts) }

	ctl := control.NewServer(app, log.Named("control"))
	defer ctl.Close()
	if err := ctl.ListenUnix(cfg.Control.Socket, control.UnixAccess{Group: cfg.Control.GID}); err != nil {
		return err
	}
	if cfg.Control.Listen != "" {
		auth, err := tcpAuth(cfg.Control)
		if err != nil {
			return err
		}
		if err := ctl.ListenTCP(cfg.Control.Listen, auth); err != nil {
			return err
		}
		log.Info("control API also listening on TCP (TLS)", zap.String("listen", cfg.Control.Listen),
			zap.Bool("token", len(auth.Token) > 0), zap.Bool("client_certificates", auth.ClientCAs != nil))
	}
	if cfg.Metrics.Enabled {
		stop, err := serveMetrics(cfg.Metrics.Listen, m, log)
		if err != nil {
			return err
		}
		defer stop()
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- d.Run(ctx) }()
	log.Info("dmvpnd starting", zap.String("version", version.Version), zap.String("config", path),
		zap.String("role", cfg.Role), zap.String("socket", cfg.Control.Socket))
	ready := d.Ready()
	for {
		select {
		case <-ready:
			ready = nil
			dp, _ := d.Dataplane()
			log.Info("dmvpnd running", zap.String("interface", cfg.Tunnel.Interface), zap.String("dataplane", dp))
			notify(sd.Ready(running(cfg, dp)))
		case err := <-runErr:
			return err
		case s := <-sigs:
			if s == syscall.SIGHUP {
				if ready == nil {
					notify(sd.Reloading())
				}
				rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
				app.reloadAndLog(rctx)
				rcancel()
				if ready == nil {
					dp, _ := d.Dataplane()
					notify(sd.Ready(running(app.Config(), dp)))
				}
				continue
			}
			log.Info("stopping", zap.Stringer("signal", s), zap.Bool("keep_routes", rt.KeepRoutes))
			notify(sd.Stopping())
			cancel()
			select {
			case err := <-runErr:
				if err == nil {
					log.Info("dmvpnd stopped")
				}
				return err
			case s := <-sigs:
				return fmt.Errorf("second signal %v while stopping: quitting at once", s)
			}
		}
	}
}

// tcpAuth loads what the control API on TCP needs: its TLS certificate,
// the CA of client certificates, the bearer token.
func tcpAuth(c config.Control) (control.TCPAuth, error) {
	var a control.TCPAuth
	cert, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey)
	if err != nil {
		return a, fmt.Errorf("control API TLS certificate: %w", err)
	}
	a.Certificate = cert
	if c.ClientCA != "" {
		if a.ClientCAs, err = config.LoadCAs(c.ClientCA); err != nil {
			return a, fmt.Errorf("control API client CA: %w", err)
		}
	}
	if c.TokenFile != "" {
		tok, err := config.ReadToken(c.TokenFile)
		if err != nil {
			return a, fmt.Errorf("control API token: %w", err)
		}
		a.Token = []byte(tok)
	}
	return a, nil
}

// metricsSource reads the App once it exists (the daemon is built with the
// metrics observer before the App).
type metricsSource struct{ app **App }

// The metrics package finds the IPsec state through this interface.
var _ control.CryptoSource = metricsSource{}

// The limiter of refused-packet lines reaches the metrics through these.
var (
	_ metrics.RefusalAuditSource = metricsSource{}
	_ metrics.RefusalAuditSource = daemonNode{}
)

// MetricsEngine implements metrics.Source.
func (s metricsSource) MetricsEngine() metrics.Engine {
	if *s.app == nil {
		return nil
	}
	return (*s.app).MetricsEngine()
}

// Counters implements metrics.Source.
func (s metricsSource) Counters() (gre.Counters, bool) {
	if *s.app == nil {
		return gre.Counters{}, false
	}
	return (*s.app).Counters()
}

// Firewall implements control.FirewallSource: the firewall's metrics
// (nil while starting and without a firewall).
func (s metricsSource) Firewall() control.Firewall {
	if *s.app == nil {
		return nil
	}
	return (*s.app).Firewall()
}

// Crypto implements control.CryptoSource: the IPsec metrics (nil while
// starting and when IPsec is off).
func (s metricsSource) Crypto() control.Crypto {
	if *s.app == nil {
		return nil
	}
	return (*s.app).Crypto()
}

// RefusalAuditSuppressed implements metrics.RefusalAuditSource (none
// while starting).
func (s metricsSource) RefusalAuditSuppressed() map[string]uint64 {
	if *s.app == nil {
		return nil
	}
	return (*s.app).RefusalAuditSuppressed()
}

// BGP implements control.RoutingSource: the BGP metrics (nil while
// starting and without BGP).
func (s metricsSource) BGP() control.Routing {
	if *s.app == nil {
		return nil
	}
	return (*s.app).BGP()
}

// serveMetrics serves /metrics on addr; the returned function stops it.
func serveMetrics(addr string, m *metrics.Metrics, log *zap.Logger) (func(), error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("metrics server stopped", zap.Error(err))
		}
	}()
	log.Info("metrics listening", zap.String("listen", l.Addr().String()))
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	}, nil
}

// newLogger builds the logger the configuration asks for, writing to w.
func newLogger(c config.Logging, w io.Writer) (*zap.Logger, zap.AtomicLevel, error) {
	level, err := zap.ParseAtomicLevel(c.Level)
	if err != nil {
		return nil, level, fmt.Errorf("logging level: %w", err)
	}
	ec := zap.NewProductionEncoderConfig()
	ec.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	if c.Format == "json" {
		enc = zapcore.NewJSONEncoder(ec)
	} else {
		ec.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(ec)
	}
	if f, ok := w.(*os.File); ok && toJournal(f) {
		enc = priorityEncoder{enc} // journald: <N> priorities
	}
	core := zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(w)), level)
	return zap.New(core), level, nil
}
