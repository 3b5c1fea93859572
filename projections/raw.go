package projections

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keyd-dev/keyd/domain"
)

// RawUpsert is the floor under a projector's catch-up, for benchmarks
// (keyd bench, BenchmarkRawUpsert): the final rows of a run of events
// written straight into the tables with the projector's own statements,
// without NATS, decoding, intermediate states or a checkpoint. Build it with
// NewRawUpsert (which does all the decoding), then time Write.
type RawUpsert struct {
	stmts  *statements
	chunks []*rows
}

// NewRawUpsert prepares the rows of recs (ascending stream sequence): each
// key's last state in the key listing and the verification snapshot, and an
// audit row per key event; the last catalog event, if any, sets the
// catalog. The rows are cut into transactions of keysPerTx keys each, the
// audit rows spread evenly over them (1000 gives 1000 key rows per
// statement, as a projector batch does).
func NewRawUpsert(tables Tables, recs []domain.Record, keysPerTx int) (*RawUpsert, error) {
	if keysPerTx < 1 {
		return nil, fmt.Errorf("projections: keysPerTx must be at least 1, not %d", keysPerTx)
	}
	ds, err := decodeRecords(recs)
	if err != nil {
		return nil, err
	}
	var keyEvents []decoded
	lastKey := map[string]int{}    // key id -> index in keyEvents of its last event
	lastDigest := map[string]int{} // digest -> index in keyEvents of its last event
	var order []string             // key ids in order of first appearance
	var catalog *decoded           // the last catalog event
	for i, d := range ds {
		if d.org != nil {
			continue // benchmarks replay no policies
		}
		if d.key == nil {
			if d.role == "" { // role events are not part of this floor
				catalog = &ds[i]
			}
			continue
		}
		if _, seen := lastKey[d.key.ID]; !seen {
			order = append(order, d.key.ID)
		}
		lastKey[d.key.ID] = len(keyEvents)
		lastDigest[string(d.digest)] = len(keyEvents)
		keyEvents = append(keyEvents, d)
	}
	n := max(1, (len(order)+keysPerTx-1)/keysPerTx)
	r := &RawUpsert{stmts: statementsFor(tables)}
	for c := range n {
		rs := &rows{}
		for _, id := range order[min(c*keysPerTx, len(order)):min((c+1)*keysPerTx, len(order))] {
			final := keyEvents[lastKey[id]]
			if err := rs.keys.add(final); err != nil {
				return nil, err
			}
			if lastDigest[string(final.digest)] == lastKey[id] {
				if err := rs.verif.add(final); err != nil {
					return nil, err
				}
			}
		}
		for _, d := range keyEvents[c*len(keyEvents)/n : (c+1)*len(keyEvents)/n] {
			rs.audit.add(d)
		}
		if c == 0 && catalog != nil {
			rs.setCatalog(*catalog)
		}
		r.chunks = append(r.chunks, rs)
	}
	return r, nil
}

// Transactions returns the number of transactions Write commits.
func (r *RawUpsert) Transactions() int { return len(r.chunks) }

// Write writes the rows into the (empty) tables, one transaction per chunk,
// each chunk's statements sent in one batch.
func (r *RawUpsert) Write(ctx context.Context, pool *pgxpool.Pool) error {
	for _, rs := range r.chunks {
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			batch := &pgx.Batch{}
			rs.queue(batch, r.stmts)
			return tx.SendBatch(ctx, batch).Close()
		})
		if err != nil {
			return fmt.Errorf("projections: raw upsert: %w", err)
		}
	}
	return nil
}

// SyntheticKey is key number i of a benchmark's replay data (keyd bench,
// BenchmarkCatchUp): created at `at` with id keyID, in one of 100
// organizations, with two permissions and a little metadata, and a digest
// derived from i (no secret exists for it).
func SyntheticKey(i int, at time.Time, keyID string) domain.KeyState {
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(i))
	dg := sha256.Sum256(n[:])
	org := fmt.Sprintf("org_%03d", i%100)
	return domain.KeyState{
		ID: keyID, OrgID: org, Name: fmt.Sprintf("key %d", i),
		Owner: domain.Owner{Type: "organization", ID: org}, Mask: fmt.Sprintf("sk_…%04d", i%10000),
		Digest: hex.EncodeToString(dg[:]), Permissions: []string{"posts:read", "posts:write"},
		Status: domain.StatusActive, CreatedAt: at, Metadata: map[string]string{"env": "prod"}, Version: 1,
	}
}
