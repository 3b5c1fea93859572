package verifier

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/migrations"
)

// Last use. A valid verification stores the time in its key's slot (an
// atomic max, in milliseconds, renewed at most once per resolution,
// Config.LastUsedResolution) and, if the slot is not queued yet, queues it
// in one of usedShards lists: per verification that is one atomic load in
// the common case (a use within the resolution of the recorded one), and a
// short lock once per key per resolution. A background flusher writes the
// queued keys' times out every LastUsedInterval, in one statement per
// flushLastUsedChunk keys, never moving a last_used_at backwards. So a key
// is written at most once per resolution, however often it is verified: at
// the default of a minute, a million keys each used every second cost
// 17,000 row writes a second instead of a million.

const (
	usedShards         = 64
	flushLastUsedChunk = 10_000
)

type usedQueue struct {
	on atomic.Bool
	// resolution (ms, ≥ 1): a key's use is recorded again only once this
	// much later than its recorded one.
	resolution int64
	shards     [usedShards]usedShard

	flushMu    sync.Mutex
	statements atomic.Int64 // statements written (tests)
}

type usedShard struct {
	mu   sync.Mutex
	list []*slot
	_    [64 - 32]byte // one cache line each
}

func (v *Verifier) trackingLastUse() bool {
	return v.cfg.Pool != nil || v.cfg.OnLastUsed != nil
}

// init turns tracking on or off and sets the resolution (see
// Config.LastUsedResolution).
func (q *usedQueue) init(on bool, resolution time.Duration) {
	q.on.Store(on)
	switch {
	case resolution == 0:
		q.resolution = DefaultLastUsedResolution.Milliseconds()
	case resolution < time.Millisecond:
		q.resolution = 1
	default:
		q.resolution = resolution.Milliseconds()
	}
}

// record notes a valid verification of sl's key at ms (Unix
// milliseconds). No allocation
// (appending to a queue list grows it rarely, and lists are reused).
func (q *usedQueue) record(sl *slot, d *domain.Digest, ms int64) {
	if !q.on.Load() {
		return
	}
	for {
		old := sl.lastUsed.Load()
		if ms-old < q.resolution {
			return // a time this recent is already queued or written
		}
		if sl.lastUsed.CompareAndSwap(old, ms) {
			break
		}
	}
	if sl.queued.Load() || !sl.queued.CompareAndSwap(false, true) {
		return
	}
	sh := &q.shards[d[2]&(usedShards-1)]
	sh.mu.Lock()
	sh.list = append(sh.list, sl)
	sh.mu.Unlock()
}

func (q *usedQueue) requeue(slots []*slot) {
	for _, sl := range slots {
		if sl.queued.CompareAndSwap(false, true) {
			sh := &q.shards[0]
			sh.mu.Lock()
			sh.list = append(sh.list, sl)
			sh.mu.Unlock()
		}
	}
}

// FlushLastUsed writes the last uses recorded since the previous flush:
// to Config.OnLastUsed if set, else to keys.last_used_at in Config.Pool, one
// statement per 10,000 keys (never moving a time backwards). A key's use is
// recorded again only Config.LastUsedResolution (default a minute) after its
// last recorded one, so a written time is the first use of its window: at
// most that much older than the key's true last use. The background
// flusher calls it every LastUsedInterval; Close calls it once more. On an
// error the uses stay queued for the next flush. A database that lacks the
// keys table or refuses the write (a read-only user) turns the tracking off,
// with an error in the log.
func (v *Verifier) FlushLastUsed(ctx context.Context) error {
	q := &v.used
	if !q.on.Load() {
		return nil
	}
	q.flushMu.Lock()
	defer q.flushMu.Unlock()
	var slots []*slot
	for i := range q.shards {
		sh := &q.shards[i]
		sh.mu.Lock()
		slots = append(slots, sh.list...)
		clear(sh.list)
		sh.list = sh.list[:0]
		sh.mu.Unlock()
	}
	if len(slots) == 0 {
		return nil
	}
	batch := make([]LastUsed, len(slots))
	for i, sl := range slots {
		sl.queued.Store(false) // before reading: a later use queues the slot again
		batch[i] = LastUsed{KeyID: sl.state.Load().id(), At: time.UnixMilli(sl.lastUsed.Load()).UTC()}
	}
	slices.SortFunc(batch, func(a, b LastUsed) int { return strings.Compare(a.KeyID, b.KeyID) })
	err := v.writeLastUsed(ctx, batch)
	if err == nil {
		return nil
	}
	if permanent(err) {
		q.on.Store(false)
		v.log.Error("verifier: cannot write keys' last use to the database; last-use tracking is off (set Config.OnLastUsed to send it elsewhere)", "err", err)
		return err
	}
	q.requeue(slots)
	return err
}

func (v *Verifier) writeLastUsed(ctx context.Context, batch []LastUsed) error {
	if v.cfg.OnLastUsed != nil {
		v.used.statements.Add(1)
		return v.cfg.OnLastUsed(ctx, batch)
	}
	return writeLastUsed(ctx, v.cfg.Pool, batch, &v.used.statements)
}

// WriteLastUsed sets keys' last_used_at in keyd's database to the times in
// used, which must be sorted by key id (as the batches handed to
// Config.OnLastUsed are): what a verifier without OnLastUsed does at each
// flush. One statement per 10,000 keys; a last_used_at never moves
// backwards; ids of keys the database does not list are ignored. Errors are
// the database's.
func WriteLastUsed(ctx context.Context, pool *pgxpool.Pool, used []LastUsed) error {
	return writeLastUsed(ctx, pool, used, nil)
}

// writeLastUsed is WriteLastUsed, counting its statements in statements
// (if not nil).
func writeLastUsed(ctx context.Context, pool *pgxpool.Pool, used []LastUsed, statements *atomic.Int64) error {
	for chunk := range slices.Chunk(used, flushLastUsedChunk) {
		ids := make([]string, len(chunk))
		times := make([]time.Time, len(chunk))
		for i, u := range chunk {
			ids[i], times[i] = u.KeyID, u.At.UTC()
		}
		if statements != nil {
			statements.Add(1)
		}
		if _, err := pool.Exec(ctx, lastUsedStatement, ids, times); err != nil {
			return fmt.Errorf("verifier: recording the last use of %d keys: %w", len(ids), err)
		}
	}
	return nil
}

// lastUsedStatement sets keys' last_used_at ($1 key ids, $2 times), never
// backwards. Rows are locked in key id order, as the projector's batches
// lock them (projections/apply.go), so concurrent flushes of overlapping
// batches (several verifiers) and projector batches cannot deadlock each
// other.
const lastUsedStatement = `
	WITH used AS (
		SELECT * FROM unnest($1::text[], $2::timestamptz[]) AS u(key_id, at)
	), locked AS (
		SELECT k.key_id, used.at
		FROM ` + migrations.KeysTable + ` k JOIN used ON used.key_id = k.key_id
		WHERE k.last_used_at IS NULL OR k.last_used_at < used.at
		ORDER BY k.key_id
		FOR UPDATE OF k
	)
	UPDATE ` + migrations.KeysTable + ` k SET last_used_at = GREATEST(k.last_used_at, locked.at)
	FROM locked WHERE k.key_id = locked.key_id`

// permanent reports errors that retrying cannot fix: no keys table, or no
// right to update it.
func permanent(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "42P01" || pgErr.Code == "42501" || pgErr.Code == "25006")
}

// flushLoop flushes last uses every LastUsedInterval until ctx ends.
func (v *Verifier) flushLoop(ctx context.Context) {
	every := v.cfg.LastUsedInterval
	if every == 0 {
		every = DefaultLastUsedInterval
	}
	if every < 0 || !v.used.on.Load() {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	var lastLog time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		fctx, cancel := context.WithTimeout(ctx, max(every, 10*time.Second))
		err := v.FlushLastUsed(fctx)
		cancel()
		if err != nil && ctx.Err() == nil && time.Since(lastLog) > time.Minute {
			lastLog = time.Now()
			v.log.Warn("verifier: writing keys' last use failed; retrying at the next flush", "err", err)
		}
		if !v.used.on.Load() {
			return
		}
	}
}
