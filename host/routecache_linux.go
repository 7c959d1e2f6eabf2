//go:build linux

package host

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// NewRouteCache follows the kernel's routes in the calling thread's
// network namespace and returns once the cache holds them all. It
// subscribes to route events first and then dumps the tables (the
// subscription's own ListExisting has no end-of-dump mark, so after a
// resubscription the cache could not tell a stale entry from one still
// to come); events that arrived during the dump are applied after it.
// When the subscription fails (a full socket buffer), it subscribes and
// dumps again. Close stops it; ctx bounds the first dump only.
func NewRouteCache(ctx context.Context) (*RouteCache, error) {
	c := newRouteCache()
	sub, err := subscribeRoutes(ctx)
	if err != nil {
		return nil, err
	}
	if err := c.load(ctx); err != nil {
		sub.close()
		return nil, err
	}
	go c.run(sub)
	return c, nil
}

type routeSub struct {
	ch   chan netlink.RouteUpdate
	done chan struct{}
}

func subscribeRoutes(ctx context.Context) (*routeSub, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s := &routeSub{ch: make(chan netlink.RouteUpdate, 1024), done: make(chan struct{})}
	err := netlink.RouteSubscribeWithOptions(s.ch, s.done, netlink.RouteSubscribeOptions{
		ReceiveBufferSize: 4 << 20,
		// Errors end the subscription (its channel closes); run sees that.
		ErrorCallback: func(error) {},
	})
	if err != nil {
		return nil, fmt.Errorf("host: route events: %w", err)
	}
	return s, nil
}

// close ends the subscription and drains its channel until the netlink
// package's goroutine closes it.
func (s *routeSub) close() {
	close(s.done)
	for range s.ch {
	}
}

// load dumps every table of both families into the cache.
func (c *RouteCache) load(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	rs, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{}, netlink.RT_FILTER_TABLE)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return fmt.Errorf("host: listing routes: %w", err)
	}
	dump := make([]Route, 0, len(rs))
	for _, r := range rs {
		if r.Dst != nil {
			dump = append(dump, fromNetlinkRoute(r))
		}
	}
	c.reset(dump)
	return nil
}

// run applies route events until Close, subscribing and loading again
// whenever the subscription ends.
func (c *RouteCache) run(sub *routeSub) {
	defer close(c.done)
	backoff := 50 * time.Millisecond
	for {
		if sub != nil {
			if c.follow(sub) {
				sub.close()
				return
			}
			sub.close()
		}
		select {
		case <-c.stop:
			return
		case <-time.After(backoff):
		}
		ctx := context.Background()
		var err error
		if sub, err = subscribeRoutes(ctx); err == nil {
			if err = c.load(ctx); err != nil {
				sub.close()
				sub = nil
			}
		}
		if err != nil {
			backoff = min(2*backoff, 2*time.Second)
		} else {
			backoff = 50 * time.Millisecond
		}
	}
}

// follow applies the subscription's events; true when Close stopped it.
func (c *RouteCache) follow(sub *routeSub) bool {
	for {
		select {
		case <-c.stop:
			return true
		case u, ok := <-sub.ch:
			if !ok {
				return false
			}
			if u.Dst == nil || (u.Type != unix.RTM_NEWROUTE && u.Type != unix.RTM_DELROUTE) {
				continue
			}
			c.update(fromNetlinkRoute(u.Route), u.Type == unix.RTM_DELROUTE)
		}
	}
}
