package projections

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/eventstore"
)

// rebuildLockKey serializes rebuilds ("keydrbld" in ASCII): two at once
// would write the same _rebuild tables.
const rebuildLockKey int64 = 0x6b65796472626c64

// rebuildBatch is the number of events per transaction of a rebuild.
const rebuildBatch = 1000

// rebuildTables are the fresh tables a rebuild fills: the live names with
// the suffix _rebuild, under their own checkpoint.
func rebuildTables() Tables {
	return suffixed(DefaultTables, "_rebuild")
}

func suffixed(t Tables, suffix string) Tables {
	return Tables{
		Keys:         t.Keys + suffix,
		Audit:        t.Audit + suffix,
		Permissions:  t.Permissions + suffix,
		Verification: t.Verification + suffix,
		Checkpoint:   t.Checkpoint + suffix,
		Policies:     t.Policies + suffix,
		Roles:        t.Roles + suffix,
	}
}

// Rebuild replays the whole KEYD_EVENTS stream into fresh read models and
// swaps them in for DefaultTables. progress (may be nil) receives a line at
// most every second and at the end of each phase, for example
//
//	rebuild: 41200/100000 events (41%), 52000 events/s, about 1s left
//
// Steps: it drops leftovers of an earlier rebuild and creates empty tables
// <name>_rebuild (LIKE <name> INCLUDING ALL); replays the stream into them
// in batches, while the live projector keeps the live tables
// current and the service answers from them; then takes the projector's
// advisory lock, waiting until the leading projector yields it (leaders
// yield to a waiting session within StandbyPoll) so that nobody writes the
// live tables; applies the events appended meanwhile; and in one
// transaction renames the live tables to <name>_old and the rebuilt ones to
// the live names, gives their indexes and constraints the live names,
// carries over last_used_at from the old keys table, sets the checkpoint
// "read_models" to the rebuilt sequence and drops the old tables. Then it
// releases the lock and a projector resumes from the new checkpoint.
//
// Only one rebuild runs at a time (another is an error). A rebuild that
// fails or is cancelled leaves the live tables untouched; its _rebuild
// tables are dropped by the next rebuild. An event that cannot be applied is
// an *EventError: the rebuild stops without swapping.
//
// key checks the events' signatures (keyd's public event key). Events it
// does not vouch for, and events that break the invariants on apply, are set
// aside as the projector does; each is reported on progress with its
// sequence (the first maxRejectLines of them, then a count).
func Rebuild(ctx context.Context, pool *pgxpool.Pool, js jetstream.JetStream, key domain.EventKey, progress io.Writer) error {
	if progress == nil {
		progress = io.Discard
	}
	rt := rebuildTables()
	stmts := statementsFor(rt)

	lock, err := pgx.ConnectConfig(ctx, pool.Config().ConnConfig.Copy())
	if err != nil {
		return fmt.Errorf("projections: rebuild: opening the lock connection: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = lock.Close(cctx) // releases both advisory locks
	}()
	var got bool
	if err := lock.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, rebuildLockKey).Scan(&got); err != nil {
		return fmt.Errorf("projections: rebuild: taking the rebuild lock: %w", err)
	}
	if !got {
		return errors.New("projections: rebuild: another rebuild is running on this database")
	}

	if err := prepareRebuild(ctx, pool, rt); err != nil {
		return err
	}

	events, err := eventstore.OpenEvents(ctx, js, key)
	if err != nil {
		return fmt.Errorf("projections: rebuild: %w", err)
	}
	state, err := events.State(ctx)
	if err != nil {
		return fmt.Errorf("projections: rebuild: %w", err)
	}
	// A rebuild's policy on a gap: say so, and replay what the stream holds.
	if err := eventstore.CheckFrom(state, 0); err != nil {
		fmt.Fprintf(progress, "rebuild: warning: the stream starts at sequence %d; events 1 to %d are gone and cannot be replayed\n",
			state.FirstSeq, state.FirstSeq-1)
	}
	tail, err := events.Tail(ctx, 1, eventstore.TailOptions{MaxMessages: 2 * rebuildBatch})
	if err != nil {
		return fmt.Errorf("projections: rebuild: %w", err)
	}
	defer tail.Stop()

	r := &replayer{pool: pool, stmts: stmts, tail: tail, out: progress, total: state.Msgs, start: time.Now()}
	if err := r.until(ctx, state.LastSeq); err != nil {
		return err
	}
	r.report(true)

	fmt.Fprintf(progress, "rebuild: waiting for the live projector to stand by\n")
	if _, err := lock.Exec(ctx, `SELECT pg_advisory_lock($1)`, advisoryLockKey); err != nil {
		return fmt.Errorf("projections: rebuild: taking the projector lock: %w", err)
	}
	if state, err = events.State(ctx); err != nil {
		return fmt.Errorf("projections: rebuild: %w", err)
	}
	if state.LastSeq > r.applied {
		r.total += state.LastSeq - r.applied
		if err := r.until(ctx, state.LastSeq); err != nil {
			return err
		}
		r.report(true)
	}

	if err := swap(ctx, pool, rt, r.applied); err != nil {
		return err
	}
	if r.rejected > maxRejectLines {
		fmt.Fprintf(progress, "rebuild: set aside %d events in all\n", r.rejected)
	}
	fmt.Fprintf(progress, "rebuild: swapped in the rebuilt read models at stream sequence %d\n", r.applied)
	if _, err := lock.Exec(ctx, `SELECT pg_advisory_unlock($1)`, advisoryLockKey); err != nil {
		return fmt.Errorf("projections: rebuild: releasing the projector lock: %w", err)
	}
	return nil
}

// maxRejectLines bounds the lines a rebuild prints about events it set aside.
const maxRejectLines = 20

// prepareRebuild drops leftovers and creates the empty rebuild tables and
// their checkpoint at 0.
func prepareRebuild(ctx context.Context, pool *pgxpool.Pool, rt Tables) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		live, old := DefaultTables.list(), suffixed(DefaultTables, "_old").list()
		for i, name := range rt.list() {
			for _, q := range []string{
				`DROP TABLE IF EXISTS ` + ident(name),
				`DROP TABLE IF EXISTS ` + ident(old[i]),
				`CREATE TABLE ` + ident(name) + ` (LIKE ` + ident(live[i]) + ` INCLUDING ALL)`,
			} {
				if _, err := tx.Exec(ctx, q); err != nil {
					return fmt.Errorf("projections: rebuild: preparing table %s: %w", name, err)
				}
			}
		}
		_, err := tx.Exec(ctx, `INSERT INTO `+checkpoints+` (name, last_seq) VALUES ($1, 0)
ON CONFLICT (name) DO UPDATE SET last_seq = 0, updated_at = now()`, rt.Checkpoint)
		if err != nil {
			return fmt.Errorf("projections: rebuild: resetting checkpoint %q: %w", rt.Checkpoint, err)
		}
		return nil
	})
}

// replayer applies the stream to the rebuild tables and reports progress.
type replayer struct {
	pool  *pgxpool.Pool
	stmts *statements
	tail  *eventstore.Tail
	out   io.Writer

	total    uint64 // events to replay, as far as known
	rejected int    // events set aside
	done     uint64 // events replayed
	applied  uint64 // the rebuild checkpoint
	start    time.Time
	printed  time.Time
}

// until replays batches until the sequence target (an existing message:
// the stream denies deletes) is applied. A batch ends at rebuildBatch
// events, at target, or where the stream ended when its last message was
// delivered.
func (r *replayer) until(ctx context.Context, target uint64) error {
	batch := make([]decoded, 0, rebuildBatch)
	for r.applied < target {
		caughtUp := false
		for len(batch) < rebuildBatch && !caughtUp {
			d, err := r.tail.Next(ctx)
			if err != nil {
				return fmt.Errorf("projections: rebuild: reading stream %s: %w", domain.StreamName, err)
			}
			dec, err := decodeDelivery(d)
			if err != nil {
				return err
			}
			batch = append(batch, dec)
			caughtUp = d.Sequence >= target || d.Pending == 0
		}
		var rejected []eventstore.Rejection
		err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
			var err error
			r.applied, rejected, err = applyChecked(ctx, tx, r.stmts, batch)
			return err
		})
		if err != nil {
			return fmt.Errorf("projections: rebuild: %w", err)
		}
		for _, rj := range rejected {
			r.rejected++
			if r.rejected <= maxRejectLines {
				fmt.Fprintf(r.out, "rebuild: set aside the event at sequence %d (subject %s): %s\n", rj.Sequence, rj.Subject, rj.Reason)
			}
		}
		r.done += uint64(len(batch))
		clear(batch)
		batch = batch[:0]
		r.report(false)
	}
	return nil
}

// report prints a progress line, at most every second unless final.
func (r *replayer) report(final bool) {
	now := time.Now()
	if !final && now.Sub(r.printed) < time.Second {
		return
	}
	if r.printed.IsZero() && !final && now.Sub(r.start) < time.Second {
		return
	}
	r.printed = now
	total := max(r.total, r.done)
	pct := uint64(100)
	if total > 0 {
		pct = r.done * 100 / total
	}
	elapsed := now.Sub(r.start).Seconds()
	rate := 0.0
	if elapsed > 0 {
		rate = float64(r.done) / elapsed
	}
	var tail string
	switch {
	case r.done >= total:
		tail = fmt.Sprintf("done in %s", roundDuration(now.Sub(r.start)))
	case rate > 0:
		tail = fmt.Sprintf("about %s left", roundDuration(time.Duration(float64(total-r.done)/rate*float64(time.Second))))
	default:
		tail = "time left unknown"
	}
	fmt.Fprintf(r.out, "rebuild: %d/%d events (%d%%), %.0f events/s, %s\n", r.done, total, pct, rate, tail)
}

func roundDuration(d time.Duration) time.Duration {
	if d < time.Second {
		return d.Round(time.Millisecond)
	}
	return d.Round(time.Second)
}

// swap makes the rebuilt tables the live ones, in one transaction.
func swap(ctx context.Context, pool *pgxpool.Pool, rt Tables, seq uint64) error {
	live, old, rebuilt := DefaultTables.list(), suffixed(DefaultTables, "_old").list(), rt.list()
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		idents := make([]string, 0, 2*len(live))
		for i := range live {
			idents = append(idents, ident(live[i]), ident(rebuilt[i]))
		}
		if _, err := tx.Exec(ctx, `LOCK TABLE `+strings.Join(idents, ", ")+` IN ACCESS EXCLUSIVE MODE`); err != nil {
			return err
		}
		liveIdx := make([][]index, len(live))
		for i, name := range live {
			var err error
			if liveIdx[i], err = indexes(ctx, tx, name); err != nil {
				return err
			}
		}
		for i := range live {
			for _, q := range []string{
				`ALTER TABLE ` + ident(live[i]) + ` RENAME TO ` + ident(old[i]),
				`ALTER TABLE ` + ident(rebuilt[i]) + ` RENAME TO ` + ident(live[i]),
			} {
				if _, err := tx.Exec(ctx, q); err != nil {
					return err
				}
			}
		}
		// last_used_at is written by verifiers, not derived from events.
		if _, err := tx.Exec(ctx, `UPDATE `+ident(DefaultTables.Keys)+` AS k SET last_used_at = o.last_used_at
FROM `+ident(old[0])+` AS o WHERE o.key_id = k.key_id AND o.last_used_at IS NOT NULL`); err != nil {
			return fmt.Errorf("copying last_used_at: %w", err)
		}
		for i := range live {
			if _, err := tx.Exec(ctx, `DROP TABLE `+ident(old[i])); err != nil {
				return err
			}
			if err := renameIndexes(ctx, tx, live[i], liveIdx[i]); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, `INSERT INTO `+checkpoints+` (name, last_seq) VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE SET last_seq = excluded.last_seq, updated_at = now()`, DefaultTables.Checkpoint, int64(seq)); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `DELETE FROM `+checkpoints+` WHERE name = $1`, rt.Checkpoint)
		return err
	})
	if err != nil {
		return fmt.Errorf("projections: rebuild: swapping the rebuilt tables in: %w", err)
	}
	return nil
}

// index is one index of a table: its name and its definition without the
// index and table names (what LIKE ... INCLUDING ALL copies).
type index struct {
	name string
	def  string
}

func indexes(ctx context.Context, tx pgx.Tx, table string) ([]index, error) {
	rows, err := tx.Query(ctx, `SELECT c.relname, i.indisprimary, i.indisunique, pg_get_indexdef(i.indexrelid)
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = $1::regclass ORDER BY c.relname`, table)
	if err != nil {
		return nil, fmt.Errorf("listing the indexes of %s: %w", table, err)
	}
	var out []index
	var name, def string
	var primary, unique bool
	_, err = pgx.ForEachRow(rows, []any{&name, &primary, &unique, &def}, func() error {
		// "CREATE UNIQUE INDEX keys_pkey ON public.keys USING btree (key_id)"
		body := def
		if i := strings.Index(def, " USING "); i >= 0 {
			body = def[i:]
		}
		out = append(out, index{name: name, def: fmt.Sprintf("primary=%t unique=%t%s", primary, unique, body)})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing the indexes of %s: %w", table, err)
	}
	return out, nil
}

// renameIndexes gives the indexes of table the names in want, matched by
// definition. Renaming the index of a primary key or unique constraint
// renames the constraint too. Without this, a rebuilt table would keep the
// generated names (keys_rebuild_pkey), and each rebuild would drift further.
func renameIndexes(ctx context.Context, tx pgx.Tx, table string, want []index) error {
	have, err := indexes(ctx, tx, table)
	if err != nil {
		return err
	}
	used := make([]bool, len(have))
	for _, w := range want {
		for i, h := range have {
			if used[i] || h.def != w.def {
				continue
			}
			used[i] = true
			if h.name != w.name {
				if _, err := tx.Exec(ctx, `ALTER INDEX `+ident(h.name)+` RENAME TO `+ident(w.name)); err != nil {
					return fmt.Errorf("renaming index %s of %s to %s: %w", h.name, table, w.name, err)
				}
			}
			break
		}
	}
	return nil
}

func ident(name string) string { return pgx.Identifier{name}.Sanitize() }
