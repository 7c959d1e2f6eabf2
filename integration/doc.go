// Package integration holds the end-to-end tests that run whole topologies
// in network namespaces (root only); the harness is lab/testbed
// and the data-plane helper they run in each node in integration/dphelper.
package integration
