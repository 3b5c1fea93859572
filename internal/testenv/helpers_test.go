package testenv

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// recordTB is a testing.TB whose Fatalf records the message and panics
// instead of failing the test, so WaitFor's failure path can be checked.
type recordTB struct {
	testing.TB
	fatal string
}

func (r *recordTB) Helper() {}
func (r *recordTB) Fatalf(format string, args ...any) {
	r.fatal = fmt.Sprintf(format, args...)
	panic(r) // stops WaitFor as the real Fatalf's runtime.Goexit would

}

func TestWaitForReturnsOnceTheConditionHolds(t *testing.T) {
	var n atomic.Int32
	go func() {
		time.Sleep(20 * time.Millisecond)
		n.Store(1)
	}()
	WaitFor(t, 5*time.Second, "n to be set", func() bool { return n.Load() == 1 })
}

func TestWaitForFailsNamingWhatItWaitedFor(t *testing.T) {
	r := &recordTB{TB: t}
	start := time.Now()
	func() {
		defer func() {
			if p := recover(); p != r {
				t.Fatalf("WaitFor did not call Fatalf (recovered %v)", p)
			}
		}()
		WaitFor(r, 30*time.Millisecond, "the moon", func() bool { return false })
	}()
	if el := time.Since(start); el < 30*time.Millisecond || el > 2*time.Second {
		t.Errorf("gave up after %s, want about 30ms", el)
	}
	if !strings.Contains(r.fatal, "the moon") || !strings.Contains(r.fatal, "30ms") {
		t.Errorf("Fatalf message %q does not name what it waited for and how long", r.fatal)
	}
}

func TestLockedRandIsDeterministicAndSafeForConcurrentUse(t *testing.T) {
	read := func(r io.Reader) []byte {
		b := make([]byte, 64)
		if _, err := io.ReadFull(r, b); err != nil {
			t.Fatal(err)
		}
		return b
	}
	a, b := read(LockedRand(7)), read(LockedRand(7))
	if !bytes.Equal(a, b) {
		t.Fatal("two readers with the same seed read different bytes")
	}
	if bytes.Equal(a, read(LockedRand(8))) {
		t.Fatal("readers with different seeds read the same bytes")
	}
	r := LockedRand(1)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				read(r)
			}
		})
	}
	wg.Wait() // -race reports a missing lock
}

func TestSyncBufferKeepsEveryConcurrentWrite(t *testing.T) {
	var b SyncBuffer
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				b.Write([]byte("x"))
				_ = b.String()
			}
		})
	}
	wg.Wait()
	if got := b.String(); got != strings.Repeat("x", 800) {
		t.Fatalf("buffer holds %d bytes, want 800", len(got))
	}
}

func TestLoggerIsSafeAfterTheTestEnded(t *testing.T) {
	var log func()
	t.Run("inner", func(t *testing.T) {
		l := Logger(t)
		l.Debug("during the test", "k", 1)
		log = func() { l.Info("after the test") }
	})
	log() // t.Log after the subtest ended would panic
}
