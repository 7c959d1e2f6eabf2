package ipsec

import (
	"fmt"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newAuditLogger opens the audit stream: one JSON object per line for
// every registration accepted or refused, for a SIEM. An empty path
// writes to standard output. The file is reopened when it is moved or
// removed (logrotate's move and create) and on Reopen (SIGHUP, reload);
// it is rotated by itself when a line would take it past maxSize bytes
// (PATH.1 … PATH.keep kept, the oldest removed; maxSize 0 or less:
// never).
func newAuditLogger(path string, maxSize int64, keep int) (*zap.Logger, *auditFile, error) {
	var w zapcore.WriteSyncer = zapcore.Lock(os.Stdout)
	var af *auditFile
	if path != "" {
		af = &auditFile{path: path, checkEvery: time.Second, maxSize: maxSize, keep: keep}
		if err := af.Reopen(); err != nil {
			return nil, nil, err
		}
		w = af
	}
	ec := zap.NewProductionEncoderConfig()
	ec.TimeKey = "time"
	ec.EncodeTime = zapcore.ISO8601TimeEncoder
	ec.MessageKey = "event"
	ec.LevelKey = ""
	ec.CallerKey = ""
	core := zapcore.NewCore(zapcore.NewJSONEncoder(ec), w, zapcore.InfoLevel)
	return zap.New(core), af, nil
}

// auditFile is the audit log's file, reopened by path when it was moved
// away or removed (checked at most every checkEvery, on write) and on
// Reopen.
type auditFile struct {
	path       string
	checkEvery time.Duration
	// maxSize rotates the file when a line would take it past this many
	// bytes (0: never); keep is how many rotated files are kept.
	maxSize int64
	keep    int

	mu      sync.Mutex
	f       *os.File
	size    int64 // of the open file
	checked time.Time
}

// Reopen closes the file and opens its path again (created mode 0600).
func (a *auditFile) Reopen() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.reopen()
}

func (a *auditFile) reopen() error {
	f, err := os.OpenFile(a.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("ipsec: audit log: %w", err)
	}
	if a.f != nil {
		a.f.Close()
	}
	a.f, a.checked, a.size = f, time.Now(), 0
	if st, err := f.Stat(); err == nil {
		a.size = st.Size()
	}
	return nil
}

// rotate moves the file to PATH.1 (PATH.1 to PATH.2 and so on, the
// oldest beyond keep removed) and opens a new one.
func (a *auditFile) rotate() error {
	if a.keep <= 0 {
		os.Remove(a.path)
	} else {
		os.Remove(fmt.Sprintf("%s.%d", a.path, a.keep))
		for i := a.keep - 1; i >= 1; i-- {
			os.Rename(fmt.Sprintf("%s.%d", a.path, i), fmt.Sprintf("%s.%d", a.path, i+1))
		}
		if err := os.Rename(a.path, a.path+".1"); err != nil {
			return fmt.Errorf("ipsec: rotating the audit log: %w", err)
		}
	}
	return a.reopen()
}

// moved reports whether the path no longer names the open file.
func (a *auditFile) moved() bool {
	cur, err := os.Stat(a.path)
	if err != nil {
		return true
	}
	open, err := a.f.Stat()
	return err != nil || !os.SameFile(cur, open)
}

// Write writes one audit line, to the file the path names now.
func (a *auditFile) Write(p []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if now := time.Now(); now.Sub(a.checked) >= a.checkEvery {
		a.checked = now
		if a.moved() {
			if err := a.reopen(); err != nil {
				// Keep writing where we can: the old file.
				fmt.Fprintf(os.Stderr, "dmvpnd: %v\n", err)
			}
		}
	}
	if a.maxSize > 0 && a.size > 0 && a.size+int64(len(p)) > a.maxSize {
		if err := a.rotate(); err != nil {
			fmt.Fprintf(os.Stderr, "dmvpnd: %v\n", err)
		}
	}
	n, err := a.f.Write(p)
	a.size += int64(n)
	return n, err
}

// Sync flushes the file.
func (a *auditFile) Sync() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.f.Sync()
}

// Close closes the file.
func (a *auditFile) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.f.Close()
}

// ReopenAudit reopens the audit log's file (after logrotate moved it;
// dmvpnd calls it on SIGHUP and on every reload). Without a file (the
// audit stream on standard output) it does nothing.
func (m *Manager) ReopenAudit() error {
	if m.auditFile == nil {
		return nil
	}
	return m.auditFile.Reopen()
}
