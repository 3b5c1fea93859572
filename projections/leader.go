package projections

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keyd-dev/keyd/migrations"
)

// Leadership: one projector writes at a time, the holder of a session
// advisory lock on a connection of its own; the others stand by.

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

// Reasons a leader stops leading without Run returning.
var (
	errLockLost = errors.New("projections: the advisory lock connection failed")
	errYield    = errors.New("projections: yielding the lock to a waiting session (a rebuild)")
)

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
		if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, advisoryLockKey).Scan(&got); err != nil {
			return fmt.Errorf("projections: trying the projector lock: %w", err)
		}
		cp, ok, err := migrations.Checkpoint(ctx, conn, p.tables.Checkpoint)
		if err != nil {
			return fmt.Errorf("projections: %w", err)
		}
		// The lock connection answers: whatever failed before is over (a
		// standby is as healthy as it can be).
		p.update(func(s *ProjectorStatus) {
			if ok {
				s.Applied = cp
			}
			s.Err = nil
		})
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
	p.status.Leader, p.lockPID = true, conn.PgConn().PID()
	p.mu.Unlock()

	err := p.follow(lctx)

	cancel(nil)
	wg.Wait()
	p.mu.Lock()
	p.status.Leader, p.lockPID, p.oldestPending = false, 0, time.Time{}
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
