//go:build !linux

package host

import "context"

// NewRouteCache needs Linux.
func NewRouteCache(ctx context.Context) (*RouteCache, error) { return nil, ErrUnsupported }
