package host

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
)

// validate checks cfg against the client's identifiers and the kernel's
// rules; it reports every problem at once.
func (c *Client) validate(cfg *Config) error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	o := c.owner
	for _, r := range cfg.Rules {
		switch {
		case !slices.Contains(o.RulePriorities, r.Priority):
			bad("rule %v: priority %d is not among the client's %v", r, r.Priority, o.RulePriorities)
		case r.Family != IPv4 && r.Family != IPv6:
			bad("rule %v: family must be IPv4 or IPv6", r)
		case actionNames[r.normal().Action] == "":
			bad("rule %v: unknown action", r)
		case r.Action == Goto && r.Goto <= r.Priority:
			bad("rule %v: a goto must jump forward", r)
		case r.Src.IsValid() && r.Src.Addr().Is4() != (r.Family == IPv4), r.Dst.IsValid() && r.Dst.Addr().Is4() != (r.Family == IPv4):
			bad("rule %v: a prefix of the other family", r)
		}
	}
	rules := map[Rule]bool{}
	for _, r := range cfg.Rules {
		if rules[r.normal()] {
			bad("rule %v listed twice", r)
		}
		rules[r.normal()] = true
	}
	if len(cfg.Routes) > 0 && o.RouteProtocol == 0 {
		bad("routes need the client's route protocol (Owner.RouteProtocol)")
	}
	keys := map[routeKey]bool{}
	for _, r := range cfg.Routes {
		if err := validRoute(r); err != nil {
			bad("route %v: %w", r, err)
			continue
		}
		if keys[r.key()] {
			bad("route %v: two routes with one key (table, destination, metric)", r)
		}
		keys[r.key()] = true
	}
	xkeys := map[xfrmKey]bool{}
	for _, p := range cfg.Xfrm {
		switch {
		case !slices.Contains(o.XfrmPriorities, p.Priority):
			bad("%v: priority %d is not among the client's %v", p, p.Priority, o.XfrmPriorities)
		case !p.Src.IsValid() || !p.Dst.IsValid() || p.Src.Addr().Is4() != p.Dst.Addr().Is4():
			bad("%v: needs source and destination prefixes of one family", p)
		case dirNames[p.Dir] == "" || p.Action > XfrmBlock:
			bad("%v: unknown direction or action", p)
		case xkeys[p.key()]:
			bad("%v: two policies with one selector and direction", p)
		}
		xkeys[p.key()] = true
	}
	skeys := map[string]bool{}
	for _, s := range cfg.Sysctls {
		switch {
		case s.Key == "" || path.IsAbs(s.Key) || path.Clean(s.Key) != s.Key || strings.HasPrefix(s.Key, ".."):
			bad("sysctl %q: give the path under /proc/sys (net/ipv4/ip_forward)", s.Key)
		case s.Value == "" || strings.ContainsAny(s.Value, "\n"):
			bad("sysctl %s: value %q", s.Key, s.Value)
		case skeys[s.Key]:
			bad("sysctl %s listed twice", s.Key)
		default:
			if x := c.m.sysctlOwner(c, s.Key); x != "" {
				bad("sysctl %s is set by %s", s.Key, x)
			}
		}
		skeys[s.Key] = true
	}
	tkeys := map[TableID]bool{}
	for _, t := range cfg.Tables {
		switch {
		case !slices.Contains(o.Tables, t.TableID):
			bad("%v is not among the client's tables", t.TableID)
		case t.Build == nil:
			bad("%v: no Build", t.TableID)
		case tkeys[t.TableID]:
			bad("%v listed twice", t.TableID)
		}
		tkeys[t.TableID] = true
	}
	return errors.Join(errs...)
}

func validRoute(r Route) error {
	if !r.Dst.IsValid() {
		return errors.New("no destination")
	}
	if r.Table < 0 || r.Metric < 0 || r.MTU < 0 {
		return errors.New("negative table, metric or MTU")
	}
	if r.Src.IsValid() && r.Src.Is4() != r.Dst.Addr().Is4() {
		return errors.New("a source of the other family")
	}
	switch r.Type {
	case Unicast:
		if len(r.NextHops) == 0 {
			return errors.New("a unicast route needs a next hop")
		}
	case BlackholeRoute, UnreachableRoute, ProhibitRoute, ThrowRoute:
		if len(r.NextHops) > 0 {
			return errors.New("this route type takes no next hop")
		}
	default:
		return fmt.Errorf("unknown route type %d", r.Type)
	}
	for _, h := range r.NextHops {
		switch {
		case !h.Gw.IsValid() && h.Dev == "" && h.Index == 0:
			return errors.New("a next hop needs a gateway or a device")
		case h.Gw.IsValid() && h.Gw.Is4() != r.Dst.Addr().Is4():
			return errors.New("a gateway of the other family")
		case h.Onlink && h.Dev == "" && h.Index == 0:
			return errors.New("an onlink next hop needs a device")
		case h.Weight < 0 || h.Weight > 256:
			return errors.New("weight out of 1-256")
		}
	}
	return nil
}
