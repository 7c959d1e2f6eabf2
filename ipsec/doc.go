// Package ipsec drives stock strongSwan over VICI: it runs a managed charon
// per node (or uses the system's), loads credentials and connections, brings
// up and tears down an SA per NBMA peer, follows SA events, reads each
// peer's certificate identity (OU=GRE=, OU=AS=, OU=NET=) so registrations
// are authorised by it, and keeps GRE from leaving in clear in userspace
// mode (policy rules) and kernel mode (catch-all xfrm policies).
package ipsec
