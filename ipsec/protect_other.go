//go:build !linux

package ipsec

// IngressFilter needs Linux; elsewhere nothing passes.
type IngressFilter struct{}

// NewIngressFilter returns a filter that accepts nothing.
func NewIngressFilter() *IngressFilter { return &IngressFilter{} }

// Accept accepts nothing.
func (*IngressFilter) Accept(int) bool { return false }

// Close does nothing.
func (*IngressFilter) Close() {}
