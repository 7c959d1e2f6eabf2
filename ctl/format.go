package ctl

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/opendmvpn/dmvpn/nhrp"
)

// upDown formats an age as Cisco's "UpDn Tm" column does: hh:mm:ss under
// a day, then 6d12h, then 3w5d; "never" for a zero time.
func upDown(since, now time.Time) string {
	if since.IsZero() {
		return "never"
	}
	d := now.Sub(since)
	if d < 0 {
		d = 0
	}
	switch {
	case d < 24*time.Hour:
		return clock(d)
	case d < 7*24*time.Hour:
		return fmt.Sprintf("%dd%02dh", int(d/(24*time.Hour)), int(d%(24*time.Hour)/time.Hour))
	}
	return fmt.Sprintf("%dw%dd", int(d/(7*24*time.Hour)), int(d%(7*24*time.Hour)/(24*time.Hour)))
}

// clock formats a duration as hh:mm:ss.
func clock(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	s := int64(d / time.Second)
	return fmt.Sprintf("%02d:%02d:%02d", s/3600, s/60%60, s%60)
}

// expiry is "expire hh:mm:ss" or "never expire".
func expiry(exp, now time.Time) string {
	if exp.IsZero() {
		return "never expire"
	}
	return "expire " + clock(exp.Sub(now))
}

// attrs is the Attrb column of show dmvpn: S static, D dynamic, I
// incomplete, N NATed, L local, X no socket (negative), T1 route installed.
func attrs(e nhrp.CacheEntry) string {
	var b strings.Builder
	switch e.Type {
	case nhrp.TypeStatic, nhrp.TypeNHS:
		b.WriteString("S")
	case nhrp.TypeDynamic, nhrp.TypeCached, nhrp.TypeShortcut:
		b.WriteString("D")
	case nhrp.TypeIncomplete:
		b.WriteString("I")
	case nhrp.TypeNegative:
		b.WriteString("IX")
	case nhrp.TypeLocal:
		b.WriteString("L")
	}
	if e.ClaimedNBMA.IsValid() || hasFlag(e, "nat") {
		b.WriteString("N")
	}
	if hasFlag(e, "rib") {
		b.WriteString("T1")
	}
	return b.String()
}

func hasFlag(e nhrp.CacheEntry, f string) bool {
	for _, x := range e.Flags {
		if x == f {
			return true
		}
	}
	return false
}

// peerAddr is the tunnel address of an entry's peer: the next hop of a
// shortcut route, the entry's own address otherwise.
func peerAddr(e nhrp.CacheEntry) netip.Addr {
	if e.NextHop.IsValid() {
		return e.NextHop
	}
	return e.Proto.Addr()
}

// orDash prints an address or "-".
func orDash(a netip.Addr) string {
	if !a.IsValid() {
		return "-"
	}
	return a.String()
}

func title(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
