//go:build linux

package firewall

import (
	"bytes"
	"context"
	"errors"
	"syscall"
	"testing"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// fakeNft records the batches a kernelTable sends through a fake netlink
// dialer and refuses those that refuse says to.
type fakeNft struct {
	batches [][]netlink.Message
	refuse  func([]netlink.Message) bool
}

func (f *fakeNft) dial(req []netlink.Message) ([]netlink.Message, error) {
	if req == nil {
		return nil, nil // the ack the library waits for
	}
	f.batches = append(f.batches, req)
	if f.refuse != nil && f.refuse(req) {
		return nil, syscall.EOPNOTSUPP
	}
	return req, nil
}

func msgType(m netlink.Message) int { return int(m.Header.Type) & 0xff }

// count counts the messages of each nftables type in a batch.
func count(batch []netlink.Message) map[int]int {
	out := map[int]int{}
	for _, m := range batch {
		out[msgType(m)]++
	}
	return out
}

// hasRule reports whether a batch adds a rule whose counter is name.
func hasRule(batch []netlink.Message, name string) bool {
	for _, m := range batch {
		if msgType(m) == unix.NFT_MSG_NEWRULE && bytes.Contains(m.Data, []byte("objref")) && bytes.Contains(m.Data, []byte(name)) {
			return true
		}
	}
	return false
}

// One Replace is one batch: the table added, deleted and added again (a
// leftover table is replaced, a missing one does not fail the batch), one
// counter per rule, the zone sets and the ports' sets, every chain and
// every rule. So it is for the hub's policy and for one grown to 200
// rules (the size of the apply goal, whose time BenchmarkReplace200
// measures): one transaction, whatever the size.
func TestReplaceIsOneBatch(t *testing.T) {
	for _, tc := range []struct {
		name  string
		p     Policy
		rules int // at least
	}{{"hub", hubPolicy(), 1}, {"200 rules", policyOf(t, 200), 200}} {
		t.Run(tc.name, func(t *testing.T) { testReplaceIsOneBatch(t, tc.p, tc.rules) })
	}
}

func testReplaceIsOneBatch(t *testing.T, p Policy, rules int) {
	f := &fakeNft{}
	k := NewKernelTable(nftables.WithTestDial(f.dial))
	rs, err := Build(p)
	if err != nil {
		t.Fatal(err)
	}
	if rs.Len() < rules {
		t.Fatalf("%d rules built, want at least %d", rs.Len(), rules)
	}
	if err := k.Replace(context.Background(), rs); err != nil {
		t.Fatal(err)
	}
	if len(f.batches) != 1 {
		t.Fatalf("%d batches, want 1", len(f.batches))
	}
	b := f.batches[0]
	if first, last := b[0].Header.Type, b[len(b)-1].Header.Type; first != unix.NFNL_MSG_BATCH_BEGIN || last != unix.NFNL_MSG_BATCH_END {
		t.Errorf("batch framed by %v … %v", first, last)
	}
	c := count(b[1 : len(b)-1])
	if c[unix.NFT_MSG_NEWTABLE] != 2 || c[unix.NFT_MSG_DELTABLE] != 1 {
		t.Errorf("table messages: %d new, %d delete; want 2 and 1", c[unix.NFT_MSG_NEWTABLE], c[unix.NFT_MSG_DELTABLE])
	}
	if msgType(b[1]) != unix.NFT_MSG_NEWTABLE || msgType(b[2]) != unix.NFT_MSG_DELTABLE || msgType(b[3]) != unix.NFT_MSG_NEWTABLE {
		t.Error("the batch does not start with add, delete, add of the table")
	}
	if c[unix.NFT_MSG_NEWOBJ] != rs.Len() || c[unix.NFT_MSG_NEWRULE] != rs.Len() || c[unix.NFT_MSG_NEWCHAIN] != len(rs.Chains) {
		t.Errorf("%d counters, %d rules, %d chains; want %d, %d, %d", c[unix.NFT_MSG_NEWOBJ], c[unix.NFT_MSG_NEWRULE], c[unix.NFT_MSG_NEWCHAIN], rs.Len(), rs.Len(), len(rs.Chains))
	}
	if c[unix.NFT_MSG_NEWSET] < len(rs.Sets) || c[unix.NFT_MSG_NEWSET] != c[unix.NFT_MSG_NEWSETELEM] {
		t.Errorf("%d sets with %d element messages for %d zone sets", c[unix.NFT_MSG_NEWSET], c[unix.NFT_MSG_NEWSETELEM], len(rs.Sets))
	}
	for _, name := range []string{"in_gre_ipsec", "out_gre_clear", "fwd_mss_out", "mark_save_isp2", "nat_isp1"} {
		if !hasRule(b, name) {
			t.Errorf("no rule counting into %s", name)
		}
	}
	for _, m := range b {
		if msgType(m) == unix.NFT_MSG_NEWRULE && bytes.Contains(m.Data, []byte("in_gre_clear")) && !bytes.Contains(m.Data, []byte("GRE without IPsec")) {
			t.Error("rule in_gre_clear carries no comment")
		}
	}
}

// A refused batch is reported with the rule that the kernel refuses on
// its own, found in check tables that are removed again.
func TestReplaceRefusedNamesRule(t *testing.T) {
	f := &fakeNft{refuse: func(b []netlink.Message) bool { return hasRule(b, "user_2") }}
	k := NewKernelTable(nftables.WithTestDial(f.dial))
	rs, err := Build(hubPolicy())
	if err != nil {
		t.Fatal(err)
	}
	err = k.Replace(context.Background(), rs)
	var re *RefusedError
	if !errors.As(err, &re) || re.Rule != "user_2" || re.Chain != "forward" || !errors.Is(err, syscall.EOPNOTSUPP) {
		t.Fatalf("error %v, want rule user_2 in forward refused with EOPNOTSUPP", err)
	}
	probes, removals := 0, 0
	for _, b := range f.batches[1:] {
		switch {
		case bytes.Contains(b[1].Data, []byte(checkTable)) && len(b) > 5:
			probes++
		case bytes.Contains(b[1].Data, []byte(checkTable)):
			removals++
		default:
			t.Errorf("a batch after the refusal touches another table")
		}
	}
	if probes == 0 || probes > 10 || removals != probes {
		t.Errorf("%d check batches, %d removals", probes, removals)
	}
}
