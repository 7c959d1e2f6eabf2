package nhrp

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/opendmvpn/dmvpn/nhrp/wire"
)

// TestRefusalWarnedOncePerMinute: a refused registration is a warning in
// the log (journald's priority 4), once a minute per client and reason,
// while every refusal is emitted (and counted).
func TestRefusalWarnedOncePerMinute(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t)
		hub := l.addHub(1, hubConfig(), 1, 2)
		core, logs := observer.New(zapcore.WarnLevel)
		hub.deps.Logger = zap.New(core)
		hub.deps.Authorizer = AuthorizerFunc(func(ctx context.Context, r Registration) Verdict {
			return Verdict{Code: uint8(wire.CIEAdminProhibited), Reason: "not in the allow list"}
		})
		l.start(hub)
		cfg := spokeConfig(1)
		cfg.RegistrationInterval = 5 * time.Second
		for i := 1; i <= 2; i++ {
			l.start(l.addSpoke(i, 1, cfg))
		}
		warned := func() map[string]int {
			out := map[string]int{}
			for _, e := range logs.FilterMessage("registration refused").All() {
				if e.Level != zapcore.WarnLevel {
					t.Errorf("logged at %v", e.Level)
				}
				out[e.ContextMap()["nbma"].(string)]++
			}
			return out
		}
		refusals := func() map[string]int {
			out := map[string]int{}
			for _, ev := range hub.eventsOf(EventRegistrationRefused) {
				out[ev.NBMA.String()]++
			}
			return out
		}
		settle(50 * time.Second)
		r, w := refusals(), warned()
		for i := 1; i <= 2; i++ {
			nbma := spokeNBMA(i).String()
			if r[nbma] < 2 || w[nbma] != 1 {
				t.Errorf("spoke%d in the first minute: refused %d times, warned %d times; want several, once", i, r[nbma], w[nbma])
			}
		}
		settle(time.Minute)
		r, w = refusals(), warned()
		for i := 1; i <= 2; i++ {
			nbma := spokeNBMA(i).String()
			if w[nbma] != 2 {
				t.Errorf("spoke%d after two minutes: refused %d times, warned %d times; want twice", i, r[nbma], w[nbma])
			}
		}
	})
}
