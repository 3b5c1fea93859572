package eventstore

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/internal/testenv"
)

func TestCheckFrom(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		first, last, applied uint64
		want                 error
	}{
		{0, 0, 0, nil},                  // a new stream, nothing applied
		{1, 10, 0, nil},                 // replay from the start
		{1, 10, 10, nil},                // caught up
		{5, 10, 4, nil},                 // the next event is the first one held
		{5, 10, 3, ErrGap},              // event 4 is gone
		{1, 10, 11, ErrCheckpointAhead}, // another, shorter stream
		{11, 10, 10, nil},               // all purged, nothing missed
	} {
		s := jetstream.StreamState{FirstSeq: c.first, LastSeq: c.last}
		err := CheckFrom(s, c.applied)
		if (c.want == nil) != (err == nil) || (c.want != nil && !errors.Is(err, c.want)) {
			t.Errorf("CheckFrom(first %d, last %d; applied %d) = %v, want %v", c.first, c.last, c.applied, err, c.want)
		}
	}
}

// appendN appends n events on subjects of key k, one at a time.
func appendN(t *testing.T, s *JetStream, k string, n int) {
	t.Helper()
	var seq uint64
	for i := range n {
		var err error
		seq, err = s.Append(t.Context(), appendOf(domain.KeySubject("org_1", k), seq, fmt.Sprintf("%s-%d", k, i), domain.EventKeyCreated))
		if err != nil {
			t.Fatal(err)
		}
	}
}

func next(t *testing.T, tail *Tail) Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	d, err := tail.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestTail: a tail delivers the stream from its start sequence, each
// message once and in order, with what was pending after it, and keeps
// delivering what is appended later.
func TestTail(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	appendN(t, f.store, "key_a", 5)
	events, err := OpenEvents(t.Context(), f.js, testSigner.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	if s, err := events.State(t.Context()); err != nil || s.LastSeq != 5 {
		t.Fatalf("State = %+v, %v; want last sequence 5", s, err)
	}
	tail, err := events.Tail(t.Context(), 3, TailOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer tail.Stop()
	for want := uint64(3); want <= 5; want++ {
		d := next(t, tail)
		if d.Sequence != want || d.Expected != want || d.Gap != nil || d.Pending != 5-want ||
			d.Subject != domain.KeySubject("org_1", "key_a") || len(d.Data) == 0 || d.Time.IsZero() {
			t.Fatalf("delivery = %+v, want sequence %d, %d pending, no gap", d, want, 5-want)
		}
	}
	appendN(t, f.store, "key_b", 1)
	if d := next(t, tail); d.Sequence != 6 || d.Pending != 0 || d.Gap != nil {
		t.Fatalf("delivery after an append = %+v, want sequence 6", d)
	}

	// Stopped: Next says so, at once.
	tail.Stop()
	select {
	case <-tail.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after Stop")
	}
	if _, err := tail.Next(t.Context()); !errors.Is(err, context.Canceled) {
		t.Fatalf("Next after Stop = %v, want context.Canceled", err)
	}
}

// TestTailGap: when the stream no longer holds the start sequence, the
// first delivery says so with ErrGap (the server silently starts at its
// first sequence).
func TestTailGap(t *testing.T) {
	t.Parallel()
	srv := startServer(t, t.TempDir())
	nc, js := connect(t, srv.ClientURL())
	cfg := StreamConfig(1)
	cfg.DenyPurge = false
	st, err := js.CreateStream(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, NewJetStream(js, nc, st), "key_a", 5)
	if err := st.Purge(t.Context(), jetstream.WithPurgeSequence(4)); err != nil { // keeps 4 and 5
		t.Fatal(err)
	}
	events, err := OpenEvents(t.Context(), js, testSigner.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	tail, err := events.Tail(t.Context(), 2, TailOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer tail.Stop()
	d := next(t, tail)
	if d.Sequence != 4 || d.Expected != 2 || !errors.Is(d.Gap, ErrGap) {
		t.Fatalf("first delivery = sequence %d, expected %d, gap %v; want 4, 2, ErrGap", d.Sequence, d.Expected, d.Gap)
	}
	if d := next(t, tail); d.Sequence != 5 || d.Gap != nil {
		t.Fatalf("second delivery = sequence %d, gap %v; want 5 without a gap", d.Sequence, d.Gap)
	}
}

func TestOpenEventsWithoutTheStream(t *testing.T) {
	t.Parallel()
	srv := startServer(t, t.TempDir())
	_, js := connect(t, srv.ClientURL())
	if _, err := OpenEvents(t.Context(), js, testSigner.PublicKey()); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Fatalf("OpenEvents = %v, want ErrStreamNotFound", err)
	}
}

// stallTail pauses the server-side consumer a tail reads (a paused
// consumer keeps answering heartbeats but delivers nothing: a consumer
// alive to the client that does not deliver, as one left on a dead peer
// is not), and returns its name.
func stallTail(t *testing.T, js jetstream.JetStream, tail *Tail) string {
	t.Helper()
	tail.mu.Lock()
	name := tail.cur.cons.CachedInfo().Name
	tail.mu.Unlock()
	if _, err := js.PauseConsumer(t.Context(), domain.StreamName, name, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	return name
}

// TestTailWatchdog: a tail whose consumer stops delivering while the stream
// moves replaces it within about StallAfter, says so (OnRestart), delivers
// every message once and in order, and leaves a quiet stream alone.
func TestTailWatchdog(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	appendN(t, f.store, "key_a", 3)
	events, err := OpenEvents(t.Context(), f.js, testSigner.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	const stallAfter = 200 * time.Millisecond
	restarts := make(chan TailRestart, 16)
	tail, err := events.Tail(t.Context(), 1, TailOptions{Heartbeat: 500 * time.Millisecond, StallAfter: stallAfter,
		OnRestart: func(r TailRestart) { restarts <- r }})
	if err != nil {
		t.Fatal(err)
	}
	defer tail.Stop()
	for want := uint64(1); want <= 3; want++ {
		if d := next(t, tail); d.Sequence != want {
			t.Fatalf("delivery %d, want %d", d.Sequence, want)
		}
	}
	// A quiet stream: nothing to replace.
	time.Sleep(4 * stallAfter)
	if n := tail.Restarts(); n != 0 {
		t.Fatalf("%d restarts on a quiet stream, want 0", n)
	}

	for round := range 3 {
		stalled := stallTail(t, f.js, tail)
		appendN(t, f.store, fmt.Sprintf("key_r%d", round), 2)
		appended := time.Now()
		for want := uint64(4 + 2*round); want <= uint64(5+2*round); want++ {
			if d := next(t, tail); d.Sequence != want || d.Gap != nil {
				t.Fatalf("round %d: delivery %d (gap %v), want %d", round, d.Sequence, d.Gap, want)
			}
		}
		took := time.Since(appended)
		t.Logf("round %d: delivered %s after the append through a stalled consumer", round, took.Round(time.Millisecond))
		if took > 5*stallAfter {
			t.Errorf("round %d: %s to deliver through a stalled consumer, want under %s", round, took, 5*stallAfter)
		}
		select {
		case r := <-restarts:
			if r.Err != nil || r.From != uint64(4+2*round) || r.StreamLast != uint64(5+2*round) || r.Idle < stallAfter {
				t.Errorf("round %d: restart %+v, want from %d, stream last %d, idle ≥ %s", round, r, 4+2*round, 5+2*round, stallAfter)
			}
		case <-time.After(time.Second): // it is called after the swap
			t.Fatalf("round %d: delivered without OnRestart", round)
		}
		// The stalled consumer is gone from the server.
		testenv.WaitFor(t, 5*time.Second, "the replaced consumer to be deleted", func() bool {
			_, err := f.js.Consumer(t.Context(), domain.StreamName, stalled)
			return errors.Is(err, jetstream.ErrConsumerNotFound)
		})
	}
	if n := tail.Restarts(); n != 3 {
		t.Errorf("Restarts = %d, want 3", n)
	}
	select {
	case d := <-tail.C():
		t.Fatalf("an extra delivery %d (a duplicate from the replaced consumer?)", d.Sequence)
	case <-time.After(2 * stallAfter):
	}
}

// TestTailWithoutWatchdog: the stall TestTailWatchdog repairs is real: with
// the watchdog off, the paused consumer delivers nothing.
func TestTailWithoutWatchdog(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	events, err := OpenEvents(t.Context(), f.js, testSigner.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	tail, err := events.Tail(t.Context(), 1, TailOptions{Heartbeat: 500 * time.Millisecond, StallAfter: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer tail.Stop()
	stallTail(t, f.js, tail)
	appendN(t, f.store, "key_a", 1)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	if d, err := tail.Next(ctx); err == nil {
		t.Fatalf("delivered %d through a paused consumer without the watchdog; the test does not stall it", d.Sequence)
	}
}
