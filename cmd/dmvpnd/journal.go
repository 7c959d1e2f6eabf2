package main

import (
	"fmt"
	"os"

	"go.uber.org/zap/buffer"
	"go.uber.org/zap/zapcore"
)

// When standard error is the journal (systemd sets $JOURNAL_STREAM to
// its device and inode), every line starts with its syslog priority in
// sd-daemon's form, <N>, which journald strips and records: journalctl -p
// warning then shows warnings and errors, a refused registration among
// them.

// journalPriority maps a zap level to a syslog priority.
func journalPriority(l zapcore.Level) int {
	switch {
	case l <= zapcore.DebugLevel:
		return 7 // debug
	case l == zapcore.InfoLevel:
		return 6 // info
	case l == zapcore.WarnLevel:
		return 4 // warning
	case l == zapcore.ErrorLevel:
		return 3 // err
	default:
		return 2 // crit: DPanic, Panic, Fatal
	}
}

// journalBuffers hold the prefixed entries.
var journalBuffers = buffer.NewPool()

// priorityEncoder prefixes each entry with <N>.
type priorityEncoder struct{ zapcore.Encoder }

// Clone implements zapcore.Encoder.
func (e priorityEncoder) Clone() zapcore.Encoder { return priorityEncoder{e.Encoder.Clone()} }

// EncodeEntry implements zapcore.Encoder.
func (e priorityEncoder) EncodeEntry(ent zapcore.Entry, fields []zapcore.Field) (*buffer.Buffer, error) {
	b, err := e.Encoder.EncodeEntry(ent, fields)
	if err != nil {
		return nil, err
	}
	out := journalBuffers.Get()
	fmt.Fprintf(out, "<%d>", journalPriority(ent.Level))
	out.Write(b.Bytes())
	b.Free()
	return out, nil
}

// toJournal reports whether f is the stream $JOURNAL_STREAM names.
func toJournal(f *os.File) bool {
	v := os.Getenv("JOURNAL_STREAM")
	if v == "" || f == nil {
		return false
	}
	dev, ino, ok := fileID(f)
	return ok && v == fmt.Sprintf("%d:%d", dev, ino)
}
