package eventstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
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
	auth   Auth
}

// OpenEvents looks up the KEYD_EVENTS stream, for a reader that checks
// events with key (the public event key: domain.EventSigner.PublicKey, or
// a verifier credential's). Its tails set aside every message key does not
// vouch for (see auth.go). A zero key is an error: no reader may follow the
// stream without checking it. A missing stream is an error that errors.Is
// jetstream.ErrStreamNotFound.
func OpenEvents(ctx context.Context, js jetstream.JetStream, key domain.EventKey) (*Events, error) {
	if key.IsZero() {
		return nil, errors.New("eventstore: following the stream needs the public event key (from KEYD_SECRET or a verifier credential)")
	}
	s, err := js.Stream(ctx, domain.StreamName)
	if err != nil {
		return nil, fmt.Errorf("eventstore: looking up the stream %s: %w", domain.StreamName, err)
	}
	var signedFrom uint64
	if info := s.CachedInfo(); info != nil {
		signedFrom = SignedFromOf(info.Config)
	}
	return &Events{js: js, stream: s, auth: NewAuth(key, signedFrom)}, nil
}

// Auth returns the check the tails apply.
func (e *Events) Auth() Auth { return e.auth }

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
	// StallAfter arms the watchdog: when the stream has held messages
	// after the last one delivered for StallAfter while nothing arrived,
	// the tail replaces its consumer with a new one from the next sequence
	// (see Tail). 0: DefaultStallAfter; negative: no watchdog.
	StallAfter time.Duration
	// OnRestart receives each replacement the watchdog makes or tries
	// (for a log line and a metric); it is called from the watchdog's
	// goroutine.
	OnRestart func(TailRestart)
}

// DefaultStallAfter is the watchdog's default bound (TailOptions.StallAfter):
// short enough that a revocation reaches a stalled reader within a second
// of the stream storing it.
const DefaultStallAfter = 500 * time.Millisecond

// TailRestart is one replacement of a tail's consumer by its watchdog.
type TailRestart struct {
	// From is the sequence the new consumer starts at (the next one the
	// tail expects).
	From uint64
	// StreamLast is the stream's last sequence as the watchdog read it.
	StreamLast uint64
	// Idle is how long nothing had arrived.
	Idle time.Duration
	// Took is how long creating the new consumer took (or failed after).
	Took time.Duration
	// Err is nil when the new consumer runs; else why it could not be
	// created (the old one is kept, and the watchdog tries again at its
	// next check).
	Err error
}

// Delivery is one stream message as a Tail delivers it.
type Delivery struct {
	// Record is the message. For a message set aside (Rejected), Data is
	// nil: a reader must not apply it, only count it and move past its
	// sequence (one that tried would fail to decode it, loudly).
	domain.Record
	// Rejected is why the tail set the message aside ("": it did not):
	// RejectUnsigned or RejectBadSignature.
	Rejected string
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
// The watchdog (TailOptions.StallAfter): an ordered consumer re-creates
// itself under the same name after a missed heartbeat or a reconnect, and
// on a cluster the meta leader may place that R1 consumer on a server that
// has just died (it counts as online for a while); the client then waits on
// it until that server returns, and the reader silently falls behind a
// stream that moves. So while nothing arrives, the tail reads the stream's
// last sequence every StallAfter/2; when two reads in a row find the stream
// ahead of the next sequence expected, nothing arrived in between and the
// reader has taken every delivery, it creates a new ordered consumer (a new
// name, so a new placement) from that sequence, and stops the old one once
// the new one exists. Both may deliver for a moment; the duplicates are
// dropped like those after a reset.
//
// Everything about following the stream is here, so a change to it is
// local: a check of each message goes in receive, the watchdog in watch.
type Tail struct {
	events *Events
	ctx    context.Context
	cancel context.CancelFunc
	ch     chan Delivery
	opts   TailOptions
	copts  []jetstream.PullConsumeOpt

	// receive's state: the client calls it from one goroutine at a time,
	// but across a consumer reset or replacement two may overlap.
	recv       sync.Mutex
	from, next uint64
	// lastRecv is when a message last arrived (Unix ns), also one dropped
	// as a duplicate: the consumer is alive.
	lastRecv atomic.Int64
	restarts atomic.Uint64

	mu   sync.Mutex
	cur  consumer // the running consumer (replaced by the watchdog)
	err  error
	done chan struct{}
	once sync.Once
}

// consumer is one ordered consumer of a Tail and its consume context.
type consumer struct {
	cons jetstream.Consumer
	cc   jetstream.ConsumeContext
}

// Tail starts following the stream from sequence from (1: the whole
// stream) until ctx ends or Stop. It returns once the consumer exists.
func (e *Events) Tail(ctx context.Context, from uint64, opts TailOptions) (*Tail, error) {
	if from == 0 {
		from = 1
	}
	if opts.StallAfter == 0 {
		opts.StallAfter = DefaultStallAfter
	}
	tctx, cancel := context.WithCancel(ctx)
	t := &Tail{events: e, ctx: tctx, cancel: cancel, ch: make(chan Delivery, tailBuffer), opts: opts,
		from: from, next: from, done: make(chan struct{})}
	if opts.MaxMessages > 0 {
		t.copts = append(t.copts, jetstream.PullMaxMessages(opts.MaxMessages))
	}
	if opts.Heartbeat > 0 {
		t.copts = append(t.copts, jetstream.PullHeartbeat(opts.Heartbeat))
	}
	if opts.OnError != nil {
		t.copts = append(t.copts, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) { opts.OnError(err) }))
	}
	c, err := t.consume(ctx, from)
	if err != nil {
		cancel()
		return nil, err
	}
	t.cur = c
	t.lastRecv.Store(time.Now().UnixNano())
	go t.watch()
	return t, nil
}

// consume creates an ordered consumer from sequence from and starts it.
func (t *Tail) consume(ctx context.Context, from uint64) (consumer, error) {
	cons, err := t.events.js.OrderedConsumer(ctx, domain.StreamName, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:   from,
	})
	if err != nil {
		return consumer{}, fmt.Errorf("eventstore: creating a consumer on the stream %s from sequence %d: %w", domain.StreamName, from, err)
	}
	cc, err := cons.Consume(t.receive, t.copts...)
	if err != nil {
		t.deleteConsumer(cons)
		return consumer{}, fmt.Errorf("eventstore: consuming the stream %s from sequence %d: %w", domain.StreamName, from, err)
	}
	return consumer{cons: cons, cc: cc}, nil
}

// deleteConsumer removes cons's server-side consumer, in the background and
// at best (the server drops an inactive one after 5 minutes anyway).
func (t *Tail) deleteConsumer(cons jetstream.Consumer) {
	info := cons.CachedInfo()
	if info == nil {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = t.events.js.DeleteConsumer(ctx, domain.StreamName, info.Name)
	}()
}

// watch runs until the tail stops: it ends the tail when its context ends
// or its consumer stops by itself (the connection closed), and runs the
// watchdog.
func (t *Tail) watch() {
	var tick <-chan time.Time
	if t.opts.StallAfter > 0 {
		tk := time.NewTicker(t.opts.StallAfter / 2)
		defer tk.Stop()
		tick = tk.C
	}
	var aheadSince int64 // Unix ns of the first of the checks that found the stream ahead; 0: none
	for {
		t.mu.Lock()
		c := t.cur
		t.mu.Unlock()
		closed := c.cc.Closed()
		for again := true; again; {
			select {
			case <-t.ctx.Done():
				t.stop(t.ctx.Err())
				t.stopCurrent()
				return
			case <-t.done: // Stop, or a message without metadata
				t.stopCurrent()
				return
			case <-closed:
				t.stop(fmt.Errorf("eventstore: the consumer of the stream %s stopped (connection closed?)", domain.StreamName))
				return
			case <-tick:
				var replaced bool
				aheadSince, replaced = t.check(aheadSince)
				again = !replaced
			}
		}
	}
}

// check is one round of the watchdog. aheadSince is when an earlier check
// found the stream ahead (0: none did); it returns the new value, and
// whether it replaced the consumer.
func (t *Tail) check(aheadSince int64) (int64, bool) {
	now := time.Now()
	last := t.lastRecv.Load()
	if now.UnixNano()-last < int64(t.opts.StallAfter/2) || len(t.ch) > 0 {
		return 0, false // messages arrive, or the reader is behind: not stalled
	}
	pctx, cancel := context.WithTimeout(t.ctx, min(max(t.opts.StallAfter, 500*time.Millisecond), 2*time.Second))
	s, err := t.events.State(pctx)
	cancel()
	if err != nil {
		return 0, false // the stream cannot say (no leader yet?): ask again next time
	}
	t.recv.Lock()
	next := t.next
	t.recv.Unlock()
	if s.LastSeq < next || t.lastRecv.Load() != last {
		return 0, false
	}
	if aheadSince == 0 || now.UnixNano()-last < int64(t.opts.StallAfter) {
		if aheadSince == 0 {
			aheadSince = now.UnixNano()
		}
		return aheadSince, false
	}
	// Stalled: replace the consumer, keeping the old one until then.
	r := TailRestart{From: next, StreamLast: s.LastSeq, Idle: now.Sub(time.Unix(0, last))}
	cctx, cancel := context.WithTimeout(t.ctx, min(max(2*t.opts.StallAfter, time.Second), 5*time.Second))
	c, err := t.consume(cctx, next)
	cancel()
	r.Took, r.Err = time.Since(now), err
	if err == nil {
		t.mu.Lock()
		old := t.cur
		stopped := t.err != nil
		if !stopped {
			t.cur = c
		}
		t.mu.Unlock()
		if stopped {
			old = c
		}
		old.cc.Stop()
		t.deleteConsumer(old.cons)
		t.restarts.Add(1)
		t.lastRecv.Store(time.Now().UnixNano())
	}
	if t.opts.OnRestart != nil && t.ctx.Err() == nil {
		t.opts.OnRestart(r)
	}
	if err != nil {
		return aheadSince, false
	}
	return 0, true
}

// stopCurrent stops the running consumer and removes it from the server.
func (t *Tail) stopCurrent() {
	t.mu.Lock()
	c := t.cur
	t.mu.Unlock()
	c.cc.Stop()
	t.deleteConsumer(c.cons)
}

// Restarts returns how many times the watchdog replaced the consumer.
func (t *Tail) Restarts() uint64 { return t.restarts.Load() }

// receive is the consumer's callback. It checks each message's signature
// (Events.Auth) before the delivery.
func (t *Tail) receive(m jetstream.Msg) {
	t.recv.Lock()
	defer t.recv.Unlock()
	t.lastRecv.Store(time.Now().UnixNano())
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
	if d.Rejected = t.events.auth.Check(seq, d.Subject, d.Data, m.Headers().Get(domain.SignatureHeader)); d.Rejected != "" {
		d.Data = nil
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
	t.mu.Lock()
	c := t.cur
	t.mu.Unlock()
	c.cc.Stop() // at once; watch removes it from the server
}
