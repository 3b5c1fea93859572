package migrations

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Names of the read-model schema (0001_read_models.sql) that keyd's code
// uses: the projector writes these tables, the read side and the verifiers
// read them. They are defined here, beside the SQL that creates them, and
// nowhere else.
const (
	// ReadModelsProjection is the row of CheckpointsTable that holds the
	// last stream sequence the live read models reflect. The projector
	// writes it in the same transaction as the rows it changes.
	ReadModelsProjection = "read_models"

	CheckpointsTable  = "projection_checkpoints"
	KeysTable         = "keys"              // the key listing
	AuditTable        = "audit_events"      // the audit log
	PermissionsTable  = "permissions"       // the permission catalog
	VerificationTable = "verification_keys" // the verifiers' snapshot
	PoliciesTable     = "policies"          // organization policies (0003_lifecycle.sql)
	RolesTable        = "roles"             // the role catalog (0004_owners_roles_resources.sql)
)

// checkpointQuery reads one projection's checkpoint.
const checkpointQuery = `SELECT last_seq FROM ` + CheckpointsTable + ` WHERE name = $1`

// Querier is what the checkpoint reads run on: a pool, a connection or a
// transaction.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Checkpoint returns the last stream sequence projection name has applied,
// and ok=false (and 0) when it has no checkpoint yet. A negative checkpoint
// is an error; other errors are the database's.
func Checkpoint(ctx context.Context, q Querier, name string) (seq uint64, ok bool, err error) {
	var last int64
	err = q.QueryRow(ctx, checkpointQuery, name).Scan(&last)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("reading checkpoint %q: %w", name, err)
	}
	if last < 0 {
		return 0, false, fmt.Errorf("checkpoint %q is negative (%d)", name, last)
	}
	return uint64(last), true, nil
}

// AppliedSequence returns the last stream sequence the live read models
// reflect (ReadModelsProjection's checkpoint; 0 before the first).
func AppliedSequence(ctx context.Context, q Querier) (uint64, error) {
	seq, _, err := Checkpoint(ctx, q, ReadModelsProjection)
	return seq, err
}
