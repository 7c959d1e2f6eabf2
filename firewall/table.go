package firewall

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// Table is the kernel's dmvpn table as the manager uses it: replaced as a
// whole, all or nothing, its counters read, removed. NewKernelTable
// returns the one that programs the kernel (google/nftables, one netlink
// batch per replace); MemTable is an in-memory fake for tests.
type Table interface {
	// Replace puts rs in force in one batch. When the kernel refuses it,
	// the previous table stays in force and the error (a *RefusedError
	// when the rule is known) names the rule.
	Replace(ctx context.Context, rs *Ruleset) error
	// Counters reads every rule's counter by rule name.
	Counters(ctx context.Context) (map[string]Counter, error)
	// Remove deletes the table; a missing table is not an error.
	Remove(ctx context.Context) error
}

// Counter is what one rule's counter holds.
type Counter struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// RefusedError is a ruleset the kernel refused, with the first rule it
// refuses on its own.
type RefusedError struct {
	// Rule and Chain name the rule; Text is the rule as nft spells it.
	Rule, Chain, Text string
	Err               error
}

// Error names the rule and the kernel's reason.
func (e *RefusedError) Error() string {
	if e.Rule == "" {
		return fmt.Sprintf("firewall: the kernel refused the table: %v", e.Err)
	}
	return fmt.Sprintf("firewall: the kernel refused rule %s in chain %s (%s): %v; the previous rules stay in force", e.Rule, e.Chain, e.Text, e.Err)
}

// Unwrap returns the kernel's error.
func (e *RefusedError) Unwrap() error { return e.Err }

// checkTable is the scratch table a refused ruleset is tried in, prefix
// by prefix, to name the rule the kernel refuses. Its base chains accept
// and jump to the rules behind a test that never holds, so it changes no
// packet's fate while it exists; it is removed at once.
const checkTable = "dmvpn_check"

// prefix returns the ruleset cut after its first n rules (all chains
// kept), for finding the first rule the kernel refuses.
func (rs *Ruleset) prefix(n int) *Ruleset {
	out := &Ruleset{Sets: rs.Sets}
	for _, c := range rs.Chains {
		k := min(n, len(c.Rules))
		c.Rules = c.Rules[:k]
		n -= k
		out.Chains = append(out.Chains, c)
	}
	return out
}

// ruleAt returns the i-th rule across chains and its chain.
func (rs *Ruleset) ruleAt(i int) (Rule, string) {
	for _, c := range rs.Chains {
		if i < len(c.Rules) {
			return c.Rules[i], c.Name
		}
		i -= len(c.Rules)
	}
	return Rule{}, ""
}

// locate finds the first rule the kernel refuses, by bisection over
// prefixes of the ruleset: check reports whether a ruleset would be
// accepted. It returns -1 when the whole set passes on its own (the
// refusal came from elsewhere), Len when the chains alone fail.
func locate(rs *Ruleset, check func(*Ruleset) error) (int, error) {
	n := rs.Len()
	if check(rs) == nil {
		return -1, nil
	}
	if err := check(rs.prefix(0)); err != nil {
		return n, err
	}
	lo, hi := 0, n // prefix(lo) passes, prefix(hi) fails
	var last error
	for hi-lo > 1 {
		mid := (lo + hi) / 2
		if err := check(rs.prefix(mid)); err != nil {
			hi, last = mid, err
		} else {
			lo = mid
		}
	}
	return lo, last
}

// refused builds the error of a refused ruleset, naming the rule check
// finds.
func refused(rs *Ruleset, err error, check func(*Ruleset) error) error {
	i, e := locate(rs, check)
	switch {
	case i < 0:
		return &RefusedError{Err: err}
	case i >= rs.Len():
		return &RefusedError{Err: fmt.Errorf("its chains: %w", e)}
	}
	r, chain := rs.ruleAt(i)
	return &RefusedError{Rule: r.Name, Chain: chain, Text: r.Text(), Err: err}
}

// MemTable is an in-memory Table: it keeps the ruleset in force, refuses
// rulesets whose rule Refuse names, and counts whatever Count adds.
type MemTable struct {
	mu      sync.Mutex
	cur     *Ruleset
	refuse  map[string]error
	count   map[string]Counter
	applies int
}

// NewMemTable returns an empty in-memory table.
func NewMemTable() *MemTable {
	return &MemTable{refuse: map[string]error{}, count: map[string]Counter{}}
}

// Refuse makes every ruleset containing the named rule fail with err.
func (m *MemTable) Refuse(rule string, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.refuse[rule] = err
}

// Count adds packets to a rule's counter.
func (m *MemTable) Count(rule string, packets, bytes uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.count[rule]
	c.Packets += packets
	c.Bytes += bytes
	m.count[rule] = c
}

func (m *MemTable) check(rs *Ruleset) error {
	for _, c := range rs.Chains {
		for _, r := range c.Rules {
			if err, ok := m.refuse[r.Name]; ok {
				return err
			}
		}
	}
	return nil
}

// Replace implements Table.
func (m *MemTable) Replace(ctx context.Context, rs *Ruleset) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := rs.Validate(); err != nil {
		return err
	}
	if err := m.check(rs); err != nil {
		return refused(rs, err, m.check)
	}
	m.cur = rs
	m.count = map[string]Counter{}
	m.applies++
	return nil
}

// Counters implements Table.
func (m *MemTable) Counters(ctx context.Context) (map[string]Counter, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cur == nil {
		return nil, errors.New("firewall: no table")
	}
	out := map[string]Counter{}
	for _, c := range m.cur.Chains {
		for _, r := range c.Rules {
			out[r.Name] = m.count[r.Name]
		}
	}
	return out, nil
}

// Remove implements Table.
func (m *MemTable) Remove(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cur = nil
	return nil
}

// Current returns the ruleset in force (nil when removed) and how many
// replaces succeeded.
func (m *MemTable) Current() (*Ruleset, int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cur, m.applies
}
