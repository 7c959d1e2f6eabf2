// Package control is dmvpnd's control API: JSON over HTTP, versioned by
// path (/v1/…), served on a unix socket (mode 0600) and, only when
// configured, on a TCP address. It is a thin layer over the daemon's Go
// API: every endpoint is one call to the NHRP engine or the daemon. The
// shell (dmvpnctl) is its client; the README documents every endpoint.
package control

import (
	"context"
	"net/netip"
	"time"

	"github.com/opendmvpn/dmvpn/gre"
	"github.com/opendmvpn/dmvpn/internal/version"
	"github.com/opendmvpn/dmvpn/nhrp"
)

// DefaultSocketPath is where dmvpnd listens and dmvpnctl connects by
// default.
const DefaultSocketPath = "/run/dmvpnd/dmvpnd.sock"

// API paths, version 1.
const (
	PathStatus        = "/v1/status"
	PathCache         = "/v1/cache"
	PathNHS           = "/v1/nhs"
	PathShortcuts     = "/v1/shortcuts"
	PathPeers         = "/v1/peers"
	PathTraffic       = "/v1/traffic"
	PathClear         = "/v1/clear"
	PathRunningConfig = "/v1/running-config"
	PathVersion       = "/v1/version"
	PathReload        = "/v1/reload"
	PathEvents        = "/v1/events"
)

// Engine is the part of the NHRP engine the API serves. *nhrp.Engine
// implements it.
type Engine interface {
	Status(ctx context.Context) (nhrp.Status, error)
	CacheEach(ctx context.Context, fn func([]nhrp.CacheEntry) error) error
	NHS(ctx context.Context) ([]nhrp.NHSStatus, error)
	PeersEach(ctx context.Context, fn func([]nhrp.PeerStatus) error) error
	Traffic(ctx context.Context) (nhrp.Traffic, error)
	Clear(ctx context.Context, r nhrp.ClearRequest) (int, error)
	Subscribe(buffer int, packets bool) (<-chan nhrp.Event, func())
}

// Daemon is the running node the API serves.
type Daemon interface {
	// Engine returns the NHRP engine, or nil while the node is starting.
	Engine() Engine
	// Info describes the node.
	Info() Info
	// Counters returns the data-plane counters; false while starting.
	Counters() (gre.Counters, bool)
	// RunningConfig is the configuration in force, as a YAML file.
	RunningConfig() []byte
	// Reload reads the configuration file again and applies it, all or
	// nothing; it returns what changed, or why nothing did. With dryRun
	// nothing is applied: what would change, or why it would be refused.
	// A refusal's error may list its reasons (a Reasons() []string
	// method).
	Reload(ctx context.Context, dryRun bool) ([]string, error)
}

// Info describes the node.
type Info struct {
	Node string `json:"node"`
	Role string `json:"role"`
	// Dataplane is the backend in use and DataplaneReason why.
	Dataplane       string    `json:"dataplane"`
	DataplaneReason string    `json:"dataplane_reason"`
	Started         time.Time `json:"started"`
	ConfigFile      string    `json:"config_file"`
	// Warnings are what an operator must know about the node's
	// configuration (it runs without IPsec, a certificate expires soon);
	// show dmvpn prints them first.
	Warnings []string `json:"warnings,omitempty"`
}

// Status is the answer of GET /v1/status.
type Status struct {
	Info
	NHRP nhrp.Status `json:"nhrp"`
}

// CacheResponse is the answer of GET /v1/cache and /v1/shortcuts.
type CacheResponse struct {
	Interface string            `json:"interface"`
	Entries   []nhrp.CacheEntry `json:"entries"`
}

// NHSResponse is the answer of GET /v1/nhs.
type NHSResponse struct {
	Interface string           `json:"interface"`
	Servers   []nhrp.NHSStatus `json:"servers"`
}

// PeersResponse is the answer of GET /v1/peers.
type PeersResponse struct {
	Interface string            `json:"interface"`
	Peers     []nhrp.PeerStatus `json:"peers"`
}

// TrafficResponse is the answer of GET /v1/traffic: NHRP packet counters
// and the data plane's.
type TrafficResponse struct {
	Interface string        `json:"interface"`
	NHRP      nhrp.Traffic  `json:"nhrp"`
	Dataplane *gre.Counters `json:"dataplane,omitempty"`
}

// ClearRequest is the body of POST /v1/clear. Static entries are never
// cleared.
type ClearRequest struct {
	// Dynamic clears registrations and learned bindings (and shortcuts).
	Dynamic bool `json:"dynamic,omitempty"`
	// Shortcut clears shortcut routes.
	Shortcut bool `json:"shortcut,omitempty"`
	// Peer clears every entry of this tunnel or NBMA address.
	Peer netip.Addr `json:"peer,omitzero"`
}

// ClearResponse is the answer of POST /v1/clear.
type ClearResponse struct {
	Cleared int `json:"cleared"`
}

// RunningConfigResponse is the answer of GET /v1/running-config.
type RunningConfigResponse struct {
	File string `json:"file"`
	YAML string `json:"yaml"`
}

// VersionResponse is the answer of GET /v1/version.
type VersionResponse struct {
	Daemon  version.Info `json:"daemon"`
	Started time.Time    `json:"started"`
}

// ReloadRequest is the (optional) body of POST /v1/reload.
type ReloadRequest struct {
	// DryRun applies nothing: the answer says what would change, or why
	// the reload would be refused.
	DryRun bool `json:"dry_run,omitempty"`
}

// ReloadResponse is the answer of POST /v1/reload.
type ReloadResponse struct {
	DryRun  bool     `json:"dry_run,omitempty"`
	Changes []string `json:"changes"`
}

// ErrorResponse is the body of every failed request.
type ErrorResponse struct {
	Error string `json:"error"`
	// Reasons are a refused reload's reasons, one each (the file's
	// errors with their lines, settings that need a restart).
	Reasons []string `json:"reasons,omitempty"`
}
