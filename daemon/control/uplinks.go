package control

import (
	"context"
	"net/http"
	"net/netip"

	"github.com/opendmvpn/dmvpn/failover"
)

// PathUplinks is the uplinks' endpoint.
const PathUplinks = "/v1/uplinks"

// Uplinks is the uplink failover of a node. *failover.Monitor implements
// it.
type Uplinks interface {
	Status(ctx context.Context) ([]failover.UplinkStatus, error)
	NBMA() []netip.Addr
}

// UplinksSource is implemented by a Daemon that may run uplink failover;
// Uplinks returns nil without it.
type UplinksSource interface {
	Uplinks() Uplinks
}

// UplinksResponse is the answer of GET /v1/uplinks.
type UplinksResponse struct {
	// Enabled says the node has an uplinks section.
	Enabled bool `json:"enabled"`
	// NBMA lists this node's NBMA addresses as the kernel routes them
	// now, the active uplink's first.
	NBMA    []netip.Addr            `json:"nbma"`
	Uplinks []failover.UplinkStatus `json:"uplinks"`
}

func (s *Server) uplinks(w http.ResponseWriter, r *http.Request) {
	u := s.uplinksOf()
	if u == nil {
		writeJSON(w, UplinksResponse{NBMA: []netip.Addr{}, Uplinks: []failover.UplinkStatus{}})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	st, err := u.Status(ctx)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err)
		return
	}
	resp := UplinksResponse{Enabled: true, NBMA: u.NBMA(), Uplinks: st}
	if resp.NBMA == nil {
		resp.NBMA = []netip.Addr{}
	}
	writeJSON(w, resp)
}

// uplinksOf returns the node's uplinks, or nil.
func (s *Server) uplinksOf() Uplinks {
	if us, ok := s.d.(UplinksSource); ok {
		return us.Uplinks()
	}
	return nil
}
