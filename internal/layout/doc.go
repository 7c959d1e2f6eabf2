// Package layout holds no code: its test keeps the module's imports
// running downward (cmd → daemon, lab, ctl → ipsec, bgp, nhrp → gre,
// host), as the README's architecture section draws them.
package layout
