package gre

import (
	"errors"
	"fmt"
	"net/netip"
)

// Overhead is the number of bytes an outer IPv4 header and a GRE header
// with a key add to every inner packet (20 + 8).
const Overhead = 28

// DefaultTTL is the outer TTL when Config.TTL is zero.
const DefaultTTL = 64

// Config is what every backend needs to bring a tunnel up.
type Config struct {
	// Name is the tunnel interface name ("gre1", "dmvpn0").
	Name string
	// Key is the GRE key. Packets without it or with another key are
	// dropped; every packet sent carries it.
	Key uint32
	// Prefix is the tunnel address with its prefix length (10.0.0.1/24).
	// Optional: an adopted interface may already carry its address.
	Prefix netip.Prefix
	// Local is the NBMA source address. Invalid means "chosen by the
	// kernel's route to each peer", which follows uplink failover.
	Local netip.Addr
	// MTU is the tunnel MTU. Zero derives it from the underlay: the MTU of
	// the interface that routes to Local (or 1500) minus Overhead.
	MTU int
	// TTL is the outer TTL; zero means DefaultTTL.
	TTL uint8
	// Checksum adds the GRE checksum to every packet sent; received
	// checksums are always verified.
	Checksum bool
	// Sequence adds a GRE sequence number to every packet sent; received
	// ones are accepted (not reordered or checked).
	Sequence bool
	// KeepState leaves the interface, its neighbours and routes in place on
	// Close (a restarting daemon adopts them again).
	KeepState bool
	// AcceptIngress, when set, is asked for the index of the interface every
	// GRE packet arrived on; packets it refuses are dropped and counted
	// (DropIngress). Where the backend cannot tell the interface it is not
	// consulted. The IPsec integration uses it to take GRE only from its
	// ipsec* interface.
	AcceptIngress func(ifindex int) bool
}

// ErrConfig wraps every validation error of Config.Validate.
var ErrConfig = errors.New("gre: invalid config")

// Validate checks the fields every backend relies on.
func (c *Config) Validate() error {
	var errs []error
	if c.Name == "" || len(c.Name) > 15 {
		errs = append(errs, fmt.Errorf("%w: interface name %q must be 1-15 bytes", ErrConfig, c.Name))
	}
	if c.Local.IsValid() && !c.Local.Is4() {
		errs = append(errs, fmt.Errorf("%w: local NBMA %s is not IPv4", ErrConfig, c.Local))
	}
	if c.MTU != 0 && (c.MTU < 576 || c.MTU > 65535-Overhead) {
		errs = append(errs, fmt.Errorf("%w: MTU %d out of range", ErrConfig, c.MTU))
	}
	if c.Prefix.IsValid() && c.Prefix.Addr().Zone() != "" {
		errs = append(errs, fmt.Errorf("%w: prefix %s has a zone", ErrConfig, c.Prefix))
	}
	return errors.Join(errs...)
}

// TTLOrDefault returns the outer TTL to use.
func (c *Config) TTLOrDefault() uint8 {
	if c.TTL == 0 {
		return DefaultTTL
	}
	return c.TTL
}

// HeaderLen returns the GRE header length the config sends: 8 with the key,
// plus 4 each for checksum and sequence number.
func (c *Config) HeaderLen() int {
	n := 8
	if c.Checksum {
		n += 4
	}
	if c.Sequence {
		n += 4
	}
	return n
}
