//go:build !linux

package ipsec

import (
	"context"
	"errors"

	"go.uber.org/zap"
)

type charon struct{}

func newCharon(Config, Mode, *zap.Logger) *charon { return &charon{} }
func (c *charon) start(context.Context) error {
	return errors.New("ipsec: a managed charon needs Linux")
}
func (c *charon) supervise(context.Context) {}
func (c *charon) stop()                     {}
func (c *charon) pid() int                  { return 0 }
