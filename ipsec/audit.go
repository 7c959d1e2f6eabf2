package ipsec

import (
	"fmt"
	"os"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newAuditLogger opens the audit stream: one JSON object per line for
// every registration accepted or refused, for a SIEM. An empty path
// writes to standard output.
func newAuditLogger(path string) (*zap.Logger, error) {
	var w zapcore.WriteSyncer = zapcore.Lock(os.Stdout)
	if path != "" {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, fmt.Errorf("ipsec: audit log: %w", err)
		}
		w = zapcore.Lock(f)
	}
	ec := zap.NewProductionEncoderConfig()
	ec.TimeKey = "time"
	ec.EncodeTime = zapcore.ISO8601TimeEncoder
	ec.MessageKey = "event"
	ec.LevelKey = ""
	ec.CallerKey = ""
	core := zapcore.NewCore(zapcore.NewJSONEncoder(ec), w, zapcore.InfoLevel)
	return zap.New(core), nil
}
