package testenv

import (
	"testing"
	"time"
)

// WaitFor polls cond (every millisecond at first, backing off to every 50 ms)
// until it returns true, and fails t with Fatal, naming what it waited for,
// if d passes first. cond runs on the calling goroutine; WaitFor must be
// called from the test's goroutine, as Fatal requires.
func WaitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for wait := time.Millisecond; !cond(); wait = min(2*wait, 50*time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(wait)
	}
}
