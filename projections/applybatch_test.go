package projections

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/keyd-dev/keyd/domain"
)

// ApplyBatch decodes recs (ascending stream sequence) and applies them to
// tables within tx, as the projector applies one batch (see applyDecoded):
// the tests compare a live projection with one ApplyBatch of the stream.
// Errors: *EventError for a record that cannot be applied, an error for
// records out of order, and Postgres errors.
func ApplyBatch(ctx context.Context, tx pgx.Tx, tables Tables, recs []domain.Record) (applied uint64, err error) {
	ds, err := decodeRecords(recs)
	if err != nil {
		return 0, err
	}
	return applyDecoded(ctx, tx, statementsFor(tables), ds)
}
