//go:build !linux

package redirect

import (
	"context"
	"errors"
)

func start(ctx context.Context, cfg Config, fn func([]byte)) (Watcher, error) {
	return nil, errors.New("redirect: needs Linux (nftables and NFLOG)")
}
