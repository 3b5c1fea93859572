package bench

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// progress is the line that says what the run is doing. On a terminal it
// is one line rewritten in place; elsewhere (CI logs) each phase is a line
// of its own and the counters within a phase are printed at most every 5
// seconds.
type progress struct {
	mu     sync.Mutex
	w      io.Writer
	tty    bool
	shown  bool // a line is on screen (terminal only)
	last   time.Time
	start  time.Time
	phaseT time.Time
}

func newProgress(w io.Writer) *progress {
	p := &progress{w: w, start: time.Now()}
	if w == nil {
		p.w = io.Discard
	}
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			p.tty = true
		}
	}
	return p
}

// phase shows the start of a step.
func (p *progress) phase(msg string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.phaseT = time.Now()
	p.write(msg, true)
}

// tick shows progress within a step (throttled).
func (p *progress) tick(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	every := 100 * time.Millisecond
	if !p.tty {
		every = 5 * time.Second
		if now.Sub(p.phaseT) < every {
			return
		}
	}
	if now.Sub(p.last) < every {
		return
	}
	p.write(fmt.Sprintf(format, args...), false)
}

func (p *progress) write(msg string, force bool) {
	p.last = time.Now()
	elapsed := time.Since(p.start).Round(time.Second)
	if p.tty {
		const width = 118
		line := fmt.Sprintf("keyd bench %s: %s", elapsed, msg)
		if len(line) > width {
			line = line[:width-1] + "…"
		}
		fmt.Fprintf(p.w, "\r\033[K%s", line)
		p.shown = true
		return
	}
	_ = force
	fmt.Fprintf(p.w, "keyd bench %s: %s\n", elapsed, msg)
}

// clear removes the line (before a result or the table is printed).
func (p *progress) clear() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty && p.shown {
		fmt.Fprint(p.w, "\r\033[K")
		p.shown = false
	}
}
