package testenv

import (
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// Logger returns a debug-level text logger that writes each record to t.Log.
// Records written after the test has ended (by goroutines that outlive it,
// such as a projector still stopping) are dropped instead of panicking.
func Logger(t testing.TB) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// testWriter is Logger's io.Writer: t.Log until the test's cleanup runs.
type testWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}
