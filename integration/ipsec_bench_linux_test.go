package integration

import (
	"context"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"
)

// recoveryGoal bounds the time until every spoke is registered again after
// the hub's charon is killed.
const recoveryGoal = 5 * time.Second

// BenchmarkIPsecHubRecovery kills the hub's charon once per iteration
// (real spokes, each with its own charon, userspace ESP) and measures the
// time until every spoke is registered again over a new SA; it fails when
// one recovery exceeds the goal. Run it with -benchtime 5x.
func BenchmarkIPsecHubRecovery(b *testing.B) {
	requireTestbed(b)
	requireCharon(b)
	p := newTestPKI(b)
	x := newE2EWith(b, "userspace", p.ipsecExtra())
	waitFor(b, 30*time.Second, "all spokes registered over IPsec", x.allRegistered)
	var took []time.Duration
	for b.Loop() {
		b.StopTimer()
		time.Sleep(time.Second) // the previous round's SAs settle
		killed := time.Now()
		syscall.Kill(charonPID(b, filepath.Join(p.dir, "state-hub")), syscall.SIGKILL)
		d := waitFor(b, 30*time.Second, "all spokes registered again", func() bool {
			for i := range x.spokes {
				if !x.hub.saUpWith(nbmaOf(x, i)) || !x.registeredSince(i, killed) {
					return false
				}
			}
			return true
		})
		took = append(took, d)
		b.StartTimer()
	}
	slices.Sort(took)
	b.ReportMetric(took[len(took)/2].Seconds(), "s-median")
	b.ReportMetric(took[len(took)-1].Seconds(), "s-max")
	b.Logf("hub charon SIGKILL → all 3 spokes registered again: %v (goal ≤ %v)", took, recoveryGoal)
	if took[len(took)-1] > recoveryGoal {
		b.Fatalf("a recovery took %v, goal %v", took[len(took)-1], recoveryGoal)
	}
}

// BenchmarkIPsecThroughput measures one TCP stream (iperf3) between two
// LAN hosts over the spoke-to-spoke shortcut, on the userspace data plane
// in clear and with IPsec (userspace ESP), rounds alternating between the
// two so machine noise hits both alike; it reports the medians and their
// ratio. Run it with -benchtime 1x.
func BenchmarkIPsecThroughput(b *testing.B) {
	requireTestbed(b)
	requireCharon(b)
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Skip("iperf3 is missing (make test installs it)")
	}
	p := newTestPKI(b)
	plain := newE2EWith(b, "userspace", nil)
	sec := newE2EWith(b, "userspace", p.ipsecExtra())
	for _, x := range []*e2e{plain, sec} {
		waitFor(b, 30*time.Second, "all spokes registered", x.allRegistered)
		pingTTL(b, x.hosts[0], x.hosts[1].Addr)
		waitFor(b, 10*time.Second, "the shortcut", func() bool {
			_, ok1 := x.shortcut(0, 1)
			_, ok2 := x.shortcut(1, 0)
			return ok1 && ok2
		})
	}
	var rp, rs []float64
	for b.Loop() {
		for round := 0; round < 3; round++ {
			rp = append(rp, iperfMbps(b, plain))
			rs = append(rs, iperfMbps(b, sec))
		}
	}
	slices.Sort(rp)
	slices.Sort(rs)
	mp, ms := rp[len(rp)/2], rs[len(rs)/2]
	b.ReportMetric(mp, "Mbit/s-clear")
	b.ReportMetric(ms, "Mbit/s-ipsec")
	b.ReportMetric(ms/mp, "ratio")
	b.Logf("one TCP stream over the shortcut, userspace data plane: in clear %.0f Mbit/s, with IPsec (userspace ESP) %.0f Mbit/s, ratio %.2f (rounds: %v / %v)", mp, ms, ms/mp, rp, rs)
}

// iperfMbps runs iperf3 for 3 s from spoke 1's LAN host to spoke 2's.
func iperfMbps(b *testing.B, x *e2e) float64 {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return iperf(ctx, b, x.hosts[0], x.hosts[1], 3) / 1e6
}
