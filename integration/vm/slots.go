package vm

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// How many VMs run at once on this machine, across test processes: the
// development and CI machines have 2 cores, TCG is CPU-bound, and the test
// packages run in parallel; more VMs than that only make each slower, and
// timing checks inside them fail.
const (
	// DefaultSlots is the number of VMs that may run at once.
	DefaultSlots = 2
	// SlotsEnv overrides DefaultSlots.
	SlotsEnv = "DMVPN_VM_SLOTS"
)

// slotDir holds the slots' lock files: machine-wide, so that test
// processes of several checkouts share them too.
func slotDir() string { return filepath.Join(os.TempDir(), "dmvpn-vm-slots") }

// slots returns how many VMs may run at once.
func slots() int {
	if n, err := strconv.Atoi(os.Getenv(SlotsEnv)); err == nil && n > 0 {
		return n
	}
	return DefaultSlots
}

// Reserve waits until n of the machine's VM slots are free and takes them,
// for VMs that must run at the same time (run them with Config.Reserved);
// release gives them back. Run takes a slot by itself otherwise. A slot is
// a lock file held with flock, so a process that dies frees its slots.
func Reserve(ctx context.Context, n int) (release func(), err error) {
	total := slots()
	if n < 1 || n > total {
		return nil, fmt.Errorf("vm: cannot reserve %d of %d VM slots", n, total)
	}
	if err := os.MkdirAll(slotDir(), 0o777); err != nil {
		return nil, fmt.Errorf("vm: slots: %w", err)
	}
	for {
		held, err := tryReserve(n, total)
		if err != nil {
			return nil, err
		}
		if held != nil {
			return func() {
				for _, f := range held {
					f.Close()
				}
			}, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("vm: waiting for a VM slot (%d run at once, %s): %w", total, SlotsEnv, ctx.Err())
		case <-time.After(time.Duration(100+rand.IntN(200)) * time.Millisecond):
		}
	}
}

// tryReserve takes n free slots at once, or none.
func tryReserve(n, total int) ([]*os.File, error) {
	var held []*os.File
	for i := 0; i < total && len(held) < n; i++ {
		f, err := os.OpenFile(filepath.Join(slotDir(), fmt.Sprintf("slot%d", i)), os.O_RDWR|os.O_CREATE, 0o666)
		if err != nil {
			for _, h := range held {
				h.Close()
			}
			return nil, fmt.Errorf("vm: slots: %w", err)
		}
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err != nil {
			f.Close()
			if errors.Is(err, syscall.EWOULDBLOCK) || errors.Is(err, syscall.EINTR) {
				continue
			}
			for _, h := range held {
				h.Close()
			}
			return nil, fmt.Errorf("vm: slots: %w", err)
		}
		held = append(held, f)
	}
	if len(held) < n {
		for _, h := range held {
			h.Close()
		}
		return nil, nil
	}
	return held, nil
}
