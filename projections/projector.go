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

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/domain"
)

// advisoryLockKey is the session advisory lock whose holder writes the
// read models ("keydproj" in ASCII). The live projector holds it while it
// leads; Rebuild holds it while it swaps tables in.
const advisoryLockKey int64 = 0x6b65796470726f6a

// lockWaiterQuery reports whether a session waits for the projector's lock
// with a blocking pg_advisory_lock (Rebuild does): the leader then yields.
// A bigint advisory lock shows in pg_locks as classid (high 32 bits), objid
// (low 32 bits) and objsubid 1.
const lockWaiterQuery = `SELECT EXISTS (SELECT 1 FROM pg_locks
 WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 1 AND NOT granted)`

func lockKeyParts(key int64) (hi, lo int64) {
	return int64(uint64(key) >> 32), int64(uint64(key) & 0xffffffff)
}

// Errors that stop a projection (Run returns them; Status keeps them).
var (
	// ErrGap: the stream no longer holds the events right after the
	// checkpoint (its first sequence is beyond checkpoint+1), so the read
	// models can never be brought up to date by following it. Rebuild them.
	ErrGap = errors.New("projections: the stream lacks events after the checkpoint")
	// ErrCheckpointAhead: the checkpoint is beyond the stream's last
	// sequence: the read models come from another (older) stream. Rebuild
	// them.
	ErrCheckpointAhead = errors.New("projections: the checkpoint is beyond the end of the stream")
)

// Reasons a leader stops leading without Run returning.
var (
	errLockLost = errors.New("projections: the advisory lock connection failed")
	errYield    = errors.New("projections: yielding the lock to a waiting session (a rebuild)")
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

	pool   *pgxpool.Pool
	js     jetstream.JetStream
	log    *slog.Logger
	tables Tables

	mu            sync.Mutex
	st            ProjectorStatus
	oldestPending time.Time // stream time of the oldest event not yet applied (leader)
	lockPID       uint32    // backend pid of the lock connection while leading (tests)
	lastApply     time.Time // when a batch was last committed
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
	// Err is why the projection stopped (an *EventError, ErrGap,
	// ErrCheckpointAhead), or the last transient failure while it retries;
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
	s := p.st
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
	f(&p.st)
	p.mu.Unlock()
}

// Run runs the projector until ctx is done (then it returns nil) or the
// projection must stop (then it returns the reason, also kept in Status().Err):
// an *EventError for an event that cannot be applied, after applying every
// event before it; ErrGap or ErrCheckpointAhead when the checkpoint does not
// fit the stream. Those need an operator: fix the cause, or rebuild.
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
	return errors.As(err, &ee) || errors.Is(err, ErrGap) || errors.Is(err, ErrCheckpointAhead)
}

// session opens a lock connection, stands by until it holds the lock, leads,
// and closes the connection (releasing the lock).
func (p *Projector) session(ctx context.Context) error {
	conn, err := pgx.ConnectConfig(ctx, p.pool.Config().ConnConfig.Copy())
	if err != nil {
		return fmt.Errorf("projections: opening the lock connection: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	for {
		var got bool
		var cp *int64
		err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1), (SELECT last_seq FROM projection_checkpoints WHERE name = $2)`,
			advisoryLockKey, p.tables.Checkpoint).Scan(&got, &cp)
		if err != nil {
			return fmt.Errorf("projections: trying the projector lock: %w", err)
		}
		if cp != nil {
			p.update(func(s *ProjectorStatus) { s.Applied = uint64(*cp) })
		}
		if got {
			return p.lead(ctx, conn)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(p.standbyPoll()):
		}
	}
}

// lead writes while conn holds the lock. It returns errLockLost or
// errYield when it stops leading for those reasons.
func (p *Projector) lead(ctx context.Context, conn *pgx.Conn) error {
	lctx, cancel := context.WithCancelCause(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		p.watchLock(lctx, conn, cancel)
	}()
	p.mu.Lock()
	p.st.Leader, p.lockPID = true, conn.PgConn().PID()
	p.mu.Unlock()

	err := p.follow(lctx)

	cancel(nil)
	wg.Wait()
	p.mu.Lock()
	p.st.Leader, p.lockPID, p.oldestPending = false, 0, time.Time{}
	p.mu.Unlock()
	if cause := context.Cause(lctx); ctx.Err() == nil && (errors.Is(cause, errLockLost) || errors.Is(cause, errYield)) {
		return cause
	}
	return err
}

// watchLock checks the lock connection every StandbyPoll and cancels the
// leader with errLockLost when it fails, or errYield when another session
// waits for the lock.
func (p *Projector) watchLock(ctx context.Context, conn *pgx.Conn, cancel context.CancelCauseFunc) {
	hi, lo := lockKeyParts(advisoryLockKey)
	t := time.NewTicker(p.standbyPoll())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		qctx, qcancel := context.WithTimeout(ctx, 5*time.Second)
		var waiting bool
		err := conn.QueryRow(qctx, lockWaiterQuery, hi, lo).Scan(&waiting)
		qcancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			cancel(fmt.Errorf("%w: %w", errLockLost, err))
			return
		}
		if waiting {
			p.log.Info("projector yields its lock to a waiting session (a rebuild)", "projection", p.tables.Checkpoint)
			cancel(errYield)
			return
		}
	}
}

// follow reads the checkpoint, checks it against the stream, and applies
// the stream from checkpoint+1 in batches until ctx is done or an error.
func (p *Projector) follow(ctx context.Context) error {
	cp, err := readCheckpoint(ctx, p.pool, p.tables.Checkpoint)
	if err != nil {
		return err
	}
	stream, err := p.js.Stream(ctx, domain.StreamName)
	if err != nil {
		return fmt.Errorf("projections: looking up stream %s: %w", domain.StreamName, err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("projections: reading stream %s: %w", domain.StreamName, err)
	}
	if err := checkStart(cp, info.State); err != nil {
		return err
	}
	p.update(func(s *ProjectorStatus) { s.Applied, s.StreamLast, s.Err = cp, info.State.LastSeq, nil })
	p.log.Info("projector leading", "projection", p.tables.Checkpoint, "checkpoint", cp, "stream_last", info.State.LastSeq)

	cons, err := p.js.OrderedConsumer(ctx, domain.StreamName, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:   cp + 1,
	})
	if err != nil {
		return fmt.Errorf("projections: creating a consumer on %s from sequence %d: %w", domain.StreamName, cp+1, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(max(2*p.batchSize(), 500)))
	if err != nil {
		return fmt.Errorf("projections: consuming %s: %w", domain.StreamName, err)
	}
	defer it.Stop()

	f := &follower{p: p, st: statementsFor(p.tables), next: cp + 1, first: true}
	return f.run(ctx, it)
}

// checkStart checks that the stream holds every event after checkpoint cp.
func checkStart(cp uint64, s jetstream.StreamState) error {
	if s.FirstSeq > cp+1 {
		return fmt.Errorf("%w: the checkpoint is %d but the stream's first sequence is %d, so events %d to %d are gone; rebuild the read models (keyd projections rebuild)",
			ErrGap, cp, s.FirstSeq, cp+1, s.FirstSeq-1)
	}
	if s.LastSeq < cp {
		return fmt.Errorf("%w: the checkpoint is %d but the stream ends at %d: the read models come from another stream; rebuild them (keyd projections rebuild)",
			ErrCheckpointAhead, cp, s.LastSeq)
	}
	return nil
}

// follower is the read-and-apply pipeline of one leadership: a reader
// goroutine takes events from the stream, decodes them and cuts batches,
// while the caller's goroutine applies the previous batch.
type follower struct {
	p     *Projector
	st    *statements
	next  uint64 // the sequence the reader expects next
	first bool
}

// batch is a run of decoded events ready to apply.
type batch struct {
	ds []decoded
	// lastTime is the stream time of the last event.
	lastTime time.Time
}

func (f *follower) run(ctx context.Context, it jetstream.MessagesContext) error {
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	batches := make(chan batch, 1)
	readErr := make(chan error, 1)
	go func() {
		defer close(batches)
		for {
			b, err := f.readBatch(rctx, it)
			if len(b.ds) > 0 {
				select {
				case batches <- b:
				case <-rctx.Done():
					readErr <- rctx.Err()
					return
				}
			}
			if err != nil {
				readErr <- err
				return
			}
		}
	}()
	for b := range batches {
		if err := f.flush(ctx, b); err != nil {
			cancel()
			for range batches { // let the reader finish
			}
			return err
		}
	}
	return <-readErr
}

// readBatch reads the next batch: it waits for an event, then takes more
// until BatchSize, BatchWait, or an event delivered when the stream had no
// more. An event that cannot be decoded ends the batch before it: the
// batch is returned with its *EventError.
func (f *follower) readBatch(ctx context.Context, it jetstream.MessagesContext) (batch, error) {
	size := f.p.batchSize()
	b := batch{ds: make([]decoded, 0, size)}
	m, err := it.Next(jetstream.NextContext(ctx))
	if err != nil {
		return b, nextError(ctx, err)
	}
	caughtUp, err := f.add(ctx, &b, m)
	if err != nil || caughtUp || len(b.ds) >= size {
		return b, err
	}
	wctx, cancel := context.WithTimeout(ctx, f.p.batchWait())
	defer cancel()
	for !caughtUp && len(b.ds) < size {
		m, err := it.Next(jetstream.NextContext(wctx))
		if err != nil {
			if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
				return b, nil
			}
			return b, nextError(ctx, err)
		}
		if caughtUp, err = f.add(ctx, &b, m); err != nil {
			return b, err
		}
	}
	return b, nil
}

func nextError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("projections: reading stream %s: %w", domain.StreamName, err)
}

// add decodes m into b and reports whether the stream had no more events
// when m was delivered.
func (f *follower) add(ctx context.Context, b *batch, m jetstream.Msg) (caughtUp bool, err error) {
	md, err := m.Metadata()
	if err != nil {
		return false, fmt.Errorf("projections: reading message metadata: %w", err)
	}
	seq := md.Sequence.Stream
	if seq != f.next {
		if f.first {
			// The server silently starts at its first sequence when asked
			// for an earlier one: check that nothing was purged meanwhile.
			if err := f.recheckStart(ctx); err != nil {
				return false, err
			}
		}
		f.p.log.Warn("projector: stream sequences missing (deleted messages)", "projection", f.p.tables.Checkpoint,
			"expected", f.next, "got", seq)
	}
	f.first = false
	f.next = seq + 1
	f.p.mu.Lock()
	f.p.st.StreamLast = max(f.p.st.StreamLast, seq+md.NumPending)
	if f.p.oldestPending.IsZero() {
		f.p.oldestPending = md.Timestamp
	}
	f.p.mu.Unlock()

	d, err := decodeRecord(domain.Record{Subject: m.Subject(), Sequence: seq, Data: m.Data()})
	if err != nil {
		return false, err // Run logs it and keeps it in Status
	}
	b.ds = append(b.ds, d)
	b.lastTime = md.Timestamp
	return md.NumPending == 0, nil
}

func (f *follower) recheckStart(ctx context.Context) error {
	stream, err := f.p.js.Stream(ctx, domain.StreamName)
	if err != nil {
		return fmt.Errorf("projections: looking up stream %s: %w", domain.StreamName, err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("projections: reading stream %s: %w", domain.StreamName, err)
	}
	return checkStart(f.next-1, info.State)
}

// flush applies b in one transaction.
func (f *follower) flush(ctx context.Context, b batch) error {
	if len(b.ds) == 0 {
		return nil
	}
	var applied uint64
	err := pgx.BeginFunc(ctx, f.p.pool, func(tx pgx.Tx) error {
		var err error
		applied, err = applyDecoded(ctx, tx, f.st, b.ds)
		return err
	})
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	f.p.mu.Lock()
	f.p.st.Applied, f.p.st.Err, f.p.lastApply = applied, nil, time.Now()
	if f.p.st.StreamLast > applied {
		// More is pending: its oldest event is no older than the last one
		// applied.
		f.p.oldestPending = b.lastTime
	} else {
		f.p.oldestPending = time.Time{}
	}
	f.p.mu.Unlock()
	return nil
}
