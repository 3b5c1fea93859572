package verifier

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/migrations"
)

// The verification snapshot: keyd's projector writes verification_keys,
// permissions and the checkpoint row "read_models" of projection_checkpoints
// (migrations.ReadModelsProjection) in one transaction, so one REPEATABLE
// READ transaction reading all three sees the exact effect of the stream up
// to the checkpoint's sequence.

// snapshotQuery reads verification_keys with every column as text, so that
// the raw bytes are the same in the text and binary formats (whatever the
// pool's query mode) and need no per-row decoding machinery: slugs hold no
// commas, so the permissions travel joined; metadata is NULL when empty.
const snapshotQuery = `SELECT encode(digest, 'hex'), key_id, org_id, owner_type, owner_id, name,
	array_to_string(permissions, ','),
	round(extract(epoch FROM expires_at) * 1000000)::bigint::text,
	status,
	CASE WHEN metadata = '{}'::jsonb THEN NULL ELSE metadata::text END,
	version::text, array_to_string(roles, ','), array_to_string(resources, ',')
FROM ` + migrations.VerificationTable

const snapshotColumns = 13

// SnapshotQuery is the query a verifier reads the verification snapshot with
// when it boots (inside its REPEATABLE READ transaction). Benchmarks read it
// raw, into nothing, as the floor under a boot (keyd bench verifier_boot).
const SnapshotQuery = snapshotQuery

// snapshotResult says what loadSnapshot found.
type snapshotResult struct {
	ok   bool   // a usable snapshot was loaded into the applier
	seq  uint64 // the stream sequence it reflects
	keys int
	why  string // when !ok: why not
}

// loadSnapshot reads the snapshot into a (whose tables must be empty). A
// database without the tables or the checkpoint is not an error: the
// result says to replay the stream. Other database errors are returned.
func (v *Verifier) loadSnapshot(ctx context.Context, a *applier) (snapshotResult, error) {
	if v.cfg.Pool == nil {
		return snapshotResult{why: "no database configured"}, nil
	}
	start := time.Now()
	tx, err := v.cfg.Pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return snapshotResult{}, fmt.Errorf("verifier: reading the verification snapshot: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // read-only

	res, err := readSnapshot(ctx, tx, a)
	if isUndefinedTable(err) {
		a.reset()
		return snapshotResult{why: "the read-model tables do not exist"}, nil
	}
	if err != nil {
		return snapshotResult{}, fmt.Errorf("verifier: reading the verification snapshot: %w", err)
	}
	if !res.ok {
		return res, nil
	}
	v.log.Info("verifier: loaded the verification snapshot", "sequence", res.seq, "keys", res.keys,
		"took", time.Since(start).Round(time.Millisecond))
	return res, nil
}

func readSnapshot(ctx context.Context, tx pgx.Tx, a *applier) (snapshotResult, error) {
	seq, ok, err := migrations.Checkpoint(ctx, tx, migrations.ReadModelsProjection)
	if err != nil {
		return snapshotResult{}, err
	}
	if !ok {
		return snapshotResult{why: "the read models have no checkpoint yet"}, nil
	}

	rows, err := tx.Query(ctx, `SELECT slug FROM `+migrations.PermissionsTable+` WHERE status = $1`, domain.PermissionRetired)
	if err != nil {
		return snapshotResult{}, err
	}
	retired, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return snapshotResult{}, err
	}
	for _, s := range retired {
		a.retired[s] = struct{}{}
	}
	if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM `+migrations.PermissionsTable).Scan(&a.catalog); err != nil {
		return snapshotResult{}, err
	}

	// Organization policies: their versions (invariants on apply) and
	// allowed_cidrs (0003_lifecycle.sql).
	rows, err = tx.Query(ctx, `SELECT org_id, allowed_cidrs, version FROM `+migrations.PoliciesTable)
	if err != nil {
		return snapshotResult{}, err
	}
	type orgPolicy struct {
		Org     string
		CIDRs   []string
		Version int64
	}
	pols, err := pgx.CollectRows(rows, pgx.RowToStructByPos[orgPolicy])
	if err != nil {
		return snapshotResult{}, err
	}
	for _, p := range pols {
		if err := a.setPolicyCIDRs(p.Org, p.CIDRs); err != nil {
			return snapshotResult{}, fmt.Errorf("policies: %w", err)
		}
		a.orgs[p.Org] = p.Version
	}

	// The role catalog, before the keys whose grants it decides.
	rows, err = tx.Query(ctx, `SELECT slug, description, permissions, status FROM `+migrations.RolesTable)
	if err != nil {
		return snapshotResult{}, err
	}
	roles, err := pgx.CollectRows(rows, pgx.RowToStructByPos[domain.Role])
	if err != nil {
		return snapshotResult{}, err
	}
	a.setRoles(roles)
	if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM `+migrations.RolesTable).Scan(&a.rolesVersion); err != nil {
		return snapshotResult{}, err
	}

	// Size the table up front, from the planner's row estimate (count(*)
	// would scan the table once more, about a third of a raw read): no
	// resizing while loading when the estimate is right, and only a few
	// resizes when it is off (-1 or 0 before the first ANALYZE).
	var estimate float64
	if err := tx.QueryRow(ctx, `SELECT reltuples FROM pg_class WHERE oid = $1::regclass`, migrations.VerificationTable).Scan(&estimate); err != nil {
		return snapshotResult{}, err
	}
	if estimate > 0 && estimate < 1<<40 {
		a.presize(int(estimate))
	}

	rows, err = tx.Query(ctx, snapshotQuery)
	if err != nil {
		return snapshotResult{}, err
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		if err := a.loadRow(rows.RawValues()); err != nil {
			return snapshotResult{}, fmt.Errorf("verification_keys row %d: %w", n+1, err)
		}
		n++
	}
	if err := rows.Err(); err != nil {
		return snapshotResult{}, err
	}
	return snapshotResult{ok: true, seq: seq, keys: n}, nil
}

// parseInt parses a decimal int64 without allocating.
func parseInt(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 20 {
		return 0, false
	}
	neg := b[0] == '-'
	if neg {
		b = b[1:]
		if len(b) == 0 {
			return 0, false
		}
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	if neg {
		n = -n
	}
	return n, true
}

func isUndefinedTable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "42P01"
}
