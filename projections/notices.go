package projections

import (
	"context"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/migrations"
)

// NoticeScheduler appends the time-driven notices key.expiring and
// key.expired. It runs beside the projection leader (IsLeader): every
// Interval it asks the read model for keys whose notice may be due (their
// expires_at, the organization's expiry_notice_seconds, and the notices the
// read model has seen) and hands each to domain.Service.AppendNotice, which
// decides from the key's last event in the stream, not from the read model,
// and appends guarded by that event's sequence with a message id naming the
// key, the notice and the expiry time.
//
// Exactly once: a notice is recorded in the key's state (ExpiringNoticed,
// ExpiredNoticed: the expiry it was sent for), carried by every later event
// of the key. Two schedulers (a leader change, a standby that was slow to
// notice it lost the lock) that decide the same notice append against the
// same last sequence: one lands, the other conflicts, reloads, finds it
// sent, and appends nothing; a retried append whose reply was lost is
// dropped by JetStream's deduplication or, after its window, found sent the
// same way. A restart or a crash loses nothing: what is due is found again
// from the read model and the stream.
//
// While no keyd runs nothing is appended; the first scheduler to run
// afterwards finds every notice that fell due meanwhile and appends them,
// key.expiring before key.expired for each key, within one Interval of
// becoming leader (plus the read model's catch-up).
type NoticeScheduler struct {
	Pool     *pgxpool.Pool
	Service  *domain.Service
	IsLeader func() bool
	Log      *slog.Logger
	// Interval between scans (default 1 s); Batch bounds one scan's keys
	// (default 1000).
	Interval time.Duration
	Batch    int
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// dueQuery finds keys whose notice may be due at $1 (at most $2).
const dueQuery = `SELECT k.org_id, k.key_id FROM ` + migrations.KeysTable + ` k
LEFT JOIN ` + migrations.PoliciesTable + ` p ON p.org_id = k.org_id
WHERE k.status <> 'revoked' AND k.expires_at IS NOT NULL
  AND k.expires_at <= $1::timestamptz + interval '31536000 seconds'
  AND k.expires_at <= $1::timestamptz + make_interval(secs => COALESCE(p.expiry_notice_seconds, 604800))
  AND (k.expiring_noticed IS DISTINCT FROM k.expires_at
       OR (k.expires_at <= $1::timestamptz AND k.expired_noticed IS DISTINCT FROM k.expires_at))
ORDER BY k.expires_at
LIMIT $2`

// Run scans until ctx ends. It returns ctx's error.
func (n *NoticeScheduler) Run(ctx context.Context) error {
	every := n.Interval
	if every <= 0 {
		every = time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if n.IsLeader == nil || n.IsLeader() {
			if _, err := n.Scan(ctx); err != nil && ctx.Err() == nil {
				n.log().Warn("notices: scan failed; retrying", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

func (n *NoticeScheduler) log() *slog.Logger {
	if n.Log != nil {
		return n.Log
	}
	return slog.Default()
}

// Scan appends every notice due now (one scan) and returns how many it
// appended.
func (n *NoticeScheduler) Scan(ctx context.Context) (int, error) {
	now := time.Now
	if n.Now != nil {
		now = n.Now
	}
	batch := n.Batch
	if batch <= 0 {
		batch = 1000
	}
	rows, err := n.Pool.Query(ctx, dueQuery, now().UTC(), batch)
	if err != nil {
		return 0, err
	}
	type due struct{ Org, Key string }
	keys, err := pgx.CollectRows(rows, pgx.RowToStructByPos[due])
	if err != nil {
		return 0, err
	}
	appended := 0
	for _, k := range keys {
		// key.expiring first; then key.expired if that is due too.
		for _, typ := range []string{domain.EventKeyExpiring, domain.EventKeyExpired} {
			ok, _, err := n.Service.AppendNotice(ctx, k.Org, k.Key, typ)
			if err != nil {
				return appended, err
			}
			if ok {
				appended++
			}
		}
	}
	return appended, nil
}
