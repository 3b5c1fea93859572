// Package projections turns the KEYD_EVENTS stream into the Postgres read
// models: the key listing, the audit log, the permission catalog and the
// verification snapshot.
//
// One projection, "read_models", writes all four tables in one transaction
// per batch together with its checkpoint (the last stream sequence applied),
// so a crash at any point neither loses nor repeats an event's effect, and a
// snapshot read of the checkpoint and the tables is exactly the stream up to
// that sequence. One process writes at a time (a Postgres advisory lock);
// the others stand by. Rebuild replays the stream into fresh tables and
// swaps them in.
package projections

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/eventstore"
	"github.com/keyd-dev/keyd/migrations"
)

// Projector is the live projection "read_models" into DefaultTables. Any
// number of Projectors (one per keyd process) may run on one database; one
// leads and writes, the others stand by.
//
// Set the option fields before Run; zero values take the defaults.
type Projector struct {
	// BatchSize bounds the events applied in one transaction (default 1000).
	BatchSize int
	// BatchWait bounds how long a batch waits for more events after its
	// first one (default 20ms). A batch is applied at once when the stream
	// has no more events pending, so a caught-up projector does not wait.
	BatchWait time.Duration
	// StandbyPoll is how often a standby tries to take the lock, and how
	// often the leader checks its lock connection (default 500ms).
	StandbyPoll time.Duration
	// Now is the clock for LagSeconds (default time.Now).
	Now func() time.Time
	// EventKey checks the events' signatures (required: the public key of
	// keyd's event signer, domain.EventSigner.PublicKey). Events it does
	// not vouch for, and events that break the invariants on apply, are set
	// aside: not applied, not halting, logged (at most a line a second with
	// their sequence) and passed to OnRejected.
	EventKey domain.EventKey
	// OnRejected, if set, receives each event set aside (for
	// keyd_events_rejected_total). Called from the projector's goroutine.
	OnRejected func(eventstore.Rejection)

	pool   *pgxpool.Pool
	js     jetstream.JetStream
	log    *slog.Logger
	tables Tables

	mu            sync.Mutex
	status        ProjectorStatus
	oldestPending time.Time // stream time of the oldest event not yet applied (leader)
	lockPID       uint32    // backend pid of the lock connection while leading (tests)
	lastApply     time.Time // when a batch was last committed
	rejectLog     rateLimited
}

// ProjectorStatus is a projector's state, for /readyz and metrics.
type ProjectorStatus struct {
	// Leader: this projector holds the lock and writes.
	Leader bool
	// Applied is the checkpoint: the last stream sequence the read models
	// reflect. A standby reads it from Postgres while polling for the lock.
	Applied uint64
	// StreamLast is the stream's last sequence as the leader last saw it,
	// LagEvents = StreamLast - Applied, and LagSeconds the age of the oldest
	// event not yet applied. All three are measured by the leader only and
	// are zero on a standby.
	StreamLast uint64
	LagEvents  uint64
	LagSeconds float64
	// Err is why the projection stopped (an *EventError,
	// eventstore.ErrGap, eventstore.ErrCheckpointAhead), or the last transient failure while it retries;
	// nil once a batch is applied again.
	Err error
}

// NewProjector returns a projector writing DefaultTables from the
// KEYD_EVENTS stream of js. log may be nil.
func NewProjector(pool *pgxpool.Pool, js jetstream.JetStream, log *slog.Logger) *Projector {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Projector{pool: pool, js: js, log: log, tables: DefaultTables}
}

func (p *Projector) batchSize() int {
	if p.BatchSize > 0 {
		return p.BatchSize
	}
	return 1000
}

func (p *Projector) batchWait() time.Duration {
	if p.BatchWait > 0 {
		return p.BatchWait
	}
	return 20 * time.Millisecond
}

func (p *Projector) standbyPoll() time.Duration {
	if p.StandbyPoll > 0 {
		return p.StandbyPoll
	}
	return 500 * time.Millisecond
}

func (p *Projector) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

// Status returns the projector's current state. It is safe to call from
// any goroutine.
func (p *Projector) Status() ProjectorStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.status
	if s.Leader {
		if s.StreamLast > s.Applied {
			s.LagEvents = s.StreamLast - s.Applied
		}
		if !p.oldestPending.IsZero() {
			s.LagSeconds = max(0, p.now().Sub(p.oldestPending).Seconds())
		}
	} else {
		s.StreamLast = 0
	}
	return s
}

func (p *Projector) update(f func(s *ProjectorStatus)) {
	p.mu.Lock()
	f(&p.status)
	p.mu.Unlock()
}

// Run runs the projector until ctx is done (then it returns nil) or the
// projection must stop (then it returns the reason, also kept in Status().Err):
// an *EventError for an event that cannot be applied, after applying every
// event before it; eventstore.ErrGap or eventstore.ErrCheckpointAhead when
// the checkpoint does not fit the stream. Those need an operator: fix the
// cause, or rebuild.
//
// Leadership: Run holds a session-level advisory lock on a connection of its
// own (not from pool) while it writes. A standby tries to take it every
// StandbyPoll. The leader checks the lock connection as often; if it fails,
// the leader stops writing at once (its transaction in flight is rolled
// back) and stands by again. The leader also yields the lock to a session
// that waits for it (Rebuild). Postgres or NATS failures are logged and kept
// in Status().Err; the projector then steps down and tries again with
// backoff. Correctness does not rest on the lock alone: each batch locks the
// checkpoint row and skips what it covers.
func (p *Projector) Run(ctx context.Context) error {
	defer p.update(func(s *ProjectorStatus) { s.Leader = false })
	backoff := time.Duration(0)
	for {
		started := time.Now()
		err := p.session(ctx)
		p.mu.Lock()
		if p.lastApply.After(started) {
			backoff = 0 // it made progress: the failure is a new one
		}
		p.mu.Unlock()
		if ctx.Err() != nil {
			return nil
		}
		if isFatal(err) {
			p.update(func(s *ProjectorStatus) { s.Err = err })
			attrs := []any{"projection", p.tables.Checkpoint, "err", err}
			if ee := (*EventError)(nil); errors.As(err, &ee) {
				attrs = append(attrs, "seq", ee.Seq, "subject", ee.Subject)
			}
			p.log.Error("projector stopped: the read models stay at their checkpoint until this is fixed", attrs...)
			return err
		}
		switch {
		case errors.Is(err, errYield):
			backoff = p.standbyPoll()
		case errors.Is(err, errLockLost):
			backoff = p.standbyPoll()
			p.log.Warn("projector stepped down: its lock connection failed", "projection", p.tables.Checkpoint, "err", err)
		default:
			backoff = min(max(2*backoff, time.Second), 15*time.Second)
			p.update(func(s *ProjectorStatus) { s.Err = err })
			p.log.Warn("projector failed; retrying", "projection", p.tables.Checkpoint, "retry_in", backoff, "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
	}
}

func isFatal(err error) bool {
	var ee *EventError
	return errors.As(err, &ee) || errors.Is(err, eventstore.ErrGap) || errors.Is(err, eventstore.ErrCheckpointAhead)
}

// follow reads the checkpoint, checks it against the stream, and applies
// the stream from checkpoint+1 in batches until ctx is done or an error.
func (p *Projector) follow(ctx context.Context) error {
	cp, _, err := migrations.Checkpoint(ctx, p.pool, p.tables.Checkpoint)
	if err != nil {
		return fmt.Errorf("projections: %w", err)
	}
	events, err := eventstore.OpenEvents(ctx, p.js, p.EventKey)
	if err != nil {
		return err
	}
	state, err := events.State(ctx)
	if err != nil {
		return err
	}
	if err := eventstore.CheckFrom(state, cp); err != nil {
		return err
	}
	p.update(func(s *ProjectorStatus) { s.Applied, s.StreamLast, s.Err = cp, state.LastSeq, nil })
	p.log.Info("projector leading", "projection", p.tables.Checkpoint, "checkpoint", cp, "stream_last", state.LastSeq)

	tail, err := events.Tail(ctx, cp+1, eventstore.TailOptions{MaxMessages: max(2*p.batchSize(), 500)})
	if err != nil {
		return err
	}
	defer tail.Stop()
	f := &follower{p: p, stmts: statementsFor(p.tables)}
	return f.run(ctx, tail)
}
