// Package ipsec will drive stock strongSwan over VICI: it loads credentials
// and connections, brings up and tears down an SA per NBMA peer, follows
// SA events, and reads a peer's certificate identity so the hub can
// authorise registrations by the OU=GRE=, OU=AS= and OU=NET= fields.
//
// The package is empty until the IPsec capability is built.
package ipsec
