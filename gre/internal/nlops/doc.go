// Package nlops is the rtnetlink surface the GRE backends use, behind a
// small interface so the requests a backend builds can be checked against
// a recording fake, plus the conversions between gre types and netlink's.
package nlops
