package eventstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/domain"
)

// Reading the stream from a sequence: every reader of KEYD_EVENTS (the
// projector, a rebuild, each verifier) looks the stream up, reads its state,
// checks that what it has applied fits the stream (CheckFrom), and follows it
// with an ordered consumer from the next sequence (Tail), in the way below.
// What a reader does when the stream does not continue what it holds (stop,
// warn, replay) is its own policy.

// Errors of CheckFrom (and of a Tail's first delivery, see Delivery.Gap).
var (
	// ErrGap: the stream no longer holds the events right after what a
	// reader has applied (its first sequence is beyond applied+1), so that
	// reader can never be brought up to date by following it.
	ErrGap = errors.New("eventstore: the stream lacks events after the checkpoint")
	// ErrCheckpointAhead: what a reader has applied is beyond the stream's
	// last sequence: it comes from another (older) stream.
	ErrCheckpointAhead = errors.New("eventstore: the checkpoint is beyond the end of the stream")
	// ErrSkipped: a Tail delivered a later sequence than the one it
	// expected although the stream should hold that one (messages deleted).
	ErrSkipped = errors.New("eventstore: the stream skipped sequences")
)

// CheckFrom checks that a reader that has applied the stream up to sequence
// applied (0: nothing) can follow it from applied+1: the stream must hold
// every event after applied (ErrGap otherwise) and must not end before it
// (ErrCheckpointAhead). The errors say how to recover (a rebuild of the read
// models).
func CheckFrom(s jetstream.StreamState, applied uint64) error {
	if s.FirstSeq > applied+1 {
		return fmt.Errorf("%w: the checkpoint is %d but the stream's first sequence is %d, so events %d to %d are gone; rebuild the read models (keyd projections rebuild)",
			ErrGap, applied, s.FirstSeq, applied+1, s.FirstSeq-1)
	}
	if s.LastSeq < applied {
		return fmt.Errorf("%w: the checkpoint is %d but the stream ends at %d: the read models come from another stream; rebuild them (keyd projections rebuild)",
			ErrCheckpointAhead, applied, s.LastSeq)
	}
	return nil
}

// Events is the KEYD_EVENTS stream of a JetStream context, for its readers.
type Events struct {
	js     jetstream.JetStream
	stream jetstream.Stream
}

// OpenEvents looks up the KEYD_EVENTS stream. A missing stream is an error
// that errors.Is jetstream.ErrStreamNotFound.
func OpenEvents(ctx context.Context, js jetstream.JetStream) (*Events, error) {
	s, err := js.Stream(ctx, domain.StreamName)
	if err != nil {
		return nil, fmt.Errorf("eventstore: looking up the stream %s: %w", domain.StreamName, err)
	}
	return &Events{js: js, stream: s}, nil
}

// Stream returns the stream handle (for the readers' own requests).
func (e *Events) Stream() jetstream.Stream { return e.stream }

// State reads the stream's state: one stream info request, answered by the
// stream leader.
func (e *Events) State(ctx context.Context) (jetstream.StreamState, error) {
	info, err := e.stream.Info(ctx)
	if err != nil {
		return jetstream.StreamState{}, fmt.Errorf("eventstore: reading the state of the stream %s: %w", domain.StreamName, err)
	}
	return info.State, nil
}

// TailOptions tune a Tail; zero values take the client's defaults.
type TailOptions struct {
	// MaxMessages is how many messages the consumer pulls ahead.
	MaxMessages int
	// Heartbeat is the idle heartbeat of the pull requests: a consumer
	// that misses two is re-created.
	Heartbeat time.Duration
	// OnError receives the consumer's errors (it re-creates itself after
	// them); it is called from the client's goroutines.
	OnError func(error)
}

// Delivery is one stream message as a Tail delivers it.
type Delivery struct {
	domain.Record
	// Pending is the number of messages the stream held after this one
	// when it was delivered: 0 means the reader has caught up.
	Pending uint64
	// Time is when the stream stored the message.
	Time time.Time
	// Expected is the sequence the tail expected: its start for the first
	// delivery, the previous delivery's + 1 after.
	Expected uint64
	// Gap is nil when Sequence == Expected. Otherwise, for the first
	// delivery (the server starts at the stream's first sequence when asked
	// for an earlier one) the tail reads the stream's state again and Gap
	// is CheckFrom's error (ErrGap), or the error of that read, or
	// ErrSkipped when the stream still holds the expected sequence's place
	// (deleted messages); for a later delivery it is ErrSkipped.
	Gap error
}

// tailBuffer is how many deliveries wait for the reader.
const tailBuffer = 1024

// Tail follows the stream from a sequence with an ordered consumer (which
// re-creates itself after a failure, resuming after the last message it
// delivered): every message once, in stream order. Messages at or below one
// already delivered (after a consumer reset) are dropped. Read it with Next
// or, in a select, from C and Done. Stop it when done.
//
// Everything about following the stream is here, so a change to it is
// local: a check of each message goes in receive, and a watchdog (re-create
// the consumer from next when the stream is ahead and nothing arrives) in
// the goroutine Tail starts, which already watches the consumer's end.
type Tail struct {
	events *Events
	ctx    context.Context
	cancel context.CancelFunc
	cc     jetstream.ConsumeContext
	ch     chan Delivery

	// receive's state: the client calls it from one goroutine at a time,
	// but across a consumer reset two may overlap.
	recv       sync.Mutex
	from, next uint64

	mu   sync.Mutex
	err  error
	done chan struct{}
	once sync.Once
}

// Tail starts following the stream from sequence from (1: the whole
// stream) until ctx ends or Stop. It returns once the consumer exists.
func (e *Events) Tail(ctx context.Context, from uint64, opts TailOptions) (*Tail, error) {
	if from == 0 {
		from = 1
	}
	cons, err := e.js.OrderedConsumer(ctx, domain.StreamName, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:   from,
	})
	if err != nil {
		return nil, fmt.Errorf("eventstore: creating a consumer on the stream %s from sequence %d: %w", domain.StreamName, from, err)
	}
	tctx, cancel := context.WithCancel(ctx)
	t := &Tail{events: e, ctx: tctx, cancel: cancel, ch: make(chan Delivery, tailBuffer),
		from: from, next: from, done: make(chan struct{})}
	var copts []jetstream.PullConsumeOpt
	if opts.MaxMessages > 0 {
		copts = append(copts, jetstream.PullMaxMessages(opts.MaxMessages))
	}
	if opts.Heartbeat > 0 {
		copts = append(copts, jetstream.PullHeartbeat(opts.Heartbeat))
	}
	if opts.OnError != nil {
		copts = append(copts, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) { opts.OnError(err) }))
	}
	t.cc, err = cons.Consume(t.receive, copts...)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("eventstore: consuming the stream %s from sequence %d: %w", domain.StreamName, from, err)
	}
	go func() {
		select {
		case <-tctx.Done():
			t.stop(tctx.Err())
			t.cc.Stop()
		case <-t.cc.Closed():
			t.stop(fmt.Errorf("eventstore: the consumer of the stream %s stopped (connection closed?)", domain.StreamName))
		}
	}()
	return t, nil
}

// receive is the consumer's callback. A check of each message (of a
// signature, say) belongs here, before the delivery.
func (t *Tail) receive(m jetstream.Msg) {
	t.recv.Lock()
	defer t.recv.Unlock()
	md, err := m.Metadata()
	if err != nil {
		t.stop(fmt.Errorf("eventstore: a message of the stream %s without metadata: %w", domain.StreamName, err))
		return
	}
	seq := md.Sequence.Stream
	if seq < t.next {
		return // delivered again after a consumer reset
	}
	d := Delivery{
		Record:   domain.Record{Subject: m.Subject(), Sequence: seq, Data: m.Data()},
		Pending:  md.NumPending,
		Time:     md.Timestamp,
		Expected: t.next,
	}
	if seq != t.next {
		d.Gap = t.gap(seq)
	}
	t.next = seq + 1
	select {
	case t.ch <- d:
	case <-t.done:
	}
}

// gap says why seq came instead of t.next.
func (t *Tail) gap(seq uint64) error {
	skipped := fmt.Errorf("%w: expected sequence %d, got %d", ErrSkipped, t.next, seq)
	if t.next != t.from {
		return skipped
	}
	// The first delivery: check that nothing was purged meanwhile.
	s, err := t.events.State(t.ctx)
	if err != nil {
		return err
	}
	if err := CheckFrom(s, t.from-1); err != nil {
		return err
	}
	return skipped
}

func (t *Tail) stop(err error) {
	t.once.Do(func() {
		t.mu.Lock()
		t.err = err
		t.mu.Unlock()
		close(t.done)
	})
}

// C delivers the messages. Select on Done too.
func (t *Tail) C() <-chan Delivery { return t.ch }

// Done is closed when the tail has stopped: Stop, its context ended, the
// consumer stopped (the connection closed), or a message without
// metadata. Err then says why.
func (t *Tail) Done() <-chan struct{} { return t.done }

// Err returns why the tail stopped (nil while it runs).
func (t *Tail) Err() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.err
}

// Next returns the next delivery, waiting for it until ctx ends (ctx's
// error) or the tail stops (Err).
func (t *Tail) Next(ctx context.Context) (Delivery, error) {
	select {
	case d := <-t.ch:
		return d, nil
	default:
	}
	select {
	case d := <-t.ch:
		return d, nil
	case <-ctx.Done():
		return Delivery{}, ctx.Err()
	case <-t.done:
		return Delivery{}, t.Err()
	}
}

// Stop stops the consumer. It is safe to call more than once.
func (t *Tail) Stop() {
	t.stop(context.Canceled)
	t.cancel()
	t.cc.Stop()
}
