package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/migrations"
)

// A key's history comes from the audit log: every key event carries the
// key's full state after it, so the history is those states in stream
// order, and the key at an instant is the state of its last event at or
// before that instant.

// HistoryEntry is one event of a key's history, with the key right after it
// (its status judged at the event's time).
type HistoryEntry struct {
	Sequence   uint64         `json:"sequence"`
	Type       string         `json:"type"`
	OccurredAt time.Time      `json:"occurred_at"`
	Actor      domain.Actor   `json:"actor"`
	Key        domain.KeyView `json:"key"`
}

// KeyHistory returns every event of the key, oldest first.
// Errors: not_found when the organization has no such key.
func (r *ReadModel) KeyHistory(ctx context.Context, org, keyID string) ([]HistoryEntry, error) {
	rows, err := r.pool.Query(ctx, `SELECT seq, envelope::text FROM `+migrations.AuditTable+
		` WHERE org_id = $1 AND key_id = $2 ORDER BY seq`, org, keyID)
	if err != nil {
		return nil, classify(fmt.Errorf("key history %s: %w", keyID, err))
	}
	type rec struct {
		Seq      int64
		Envelope string
	}
	recs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[rec])
	if err != nil {
		return nil, classify(fmt.Errorf("key history %s: %w", keyID, err))
	}
	if len(recs) == 0 {
		return nil, domain.Errorf(domain.ENotFound, "key %s not found in organization %s", keyID, org)
	}
	out := make([]HistoryEntry, 0, len(recs))
	for _, rc := range recs {
		ev, k, err := decodeKeyEvent(rc.Envelope)
		if err != nil {
			return nil, classify(fmt.Errorf("key history %s, sequence %d: %w", keyID, rc.Seq, err))
		}
		out = append(out, HistoryEntry{Sequence: uint64(rc.Seq), Type: ev.Type, OccurredAt: ev.OccurredAt.UTC(), Actor: ev.Actor, Key: k.View(ev.OccurredAt, nil)})
	}
	return out, nil
}

// KeyAt returns the key as it was at instant at, its status judged then.
// Errors: not_found when the key did not exist yet at that instant (or
// the organization has no such key).
func (r *ReadModel) KeyAt(ctx context.Context, org, keyID string, at time.Time) (domain.KeyView, error) {
	var env string
	err := r.pool.QueryRow(ctx, `SELECT envelope::text FROM `+migrations.AuditTable+
		` WHERE org_id = $1 AND key_id = $2 AND occurred_at <= $3 ORDER BY seq DESC LIMIT 1`, org, keyID, at).Scan(&env)
	if err == pgx.ErrNoRows {
		return domain.KeyView{}, domain.Errorf(domain.ENotFound, "key %s of organization %s did not exist at %s", keyID, org, at.UTC().Format(time.RFC3339))
	}
	if err != nil {
		return domain.KeyView{}, classify(fmt.Errorf("key %s at %s: %w", keyID, at, err))
	}
	_, k, err := decodeKeyEvent(env)
	if err != nil {
		return domain.KeyView{}, classify(fmt.Errorf("key %s at %s: %w", keyID, at, err))
	}
	return k.View(at, nil), nil
}

func decodeKeyEvent(envelope string) (domain.Event, domain.KeyState, error) {
	ev, err := domain.DecodeEvent([]byte(envelope))
	if err != nil {
		return domain.Event{}, domain.KeyState{}, err
	}
	k, err := ev.KeyState()
	return ev, k, err
}

// ActiveKeyIDs lists the ids of the organization's keys that are not
// revoked (domain.OrgKeys: set_policy counts them under max_active_keys).
func (r *ReadModel) ActiveKeyIDs(ctx context.Context, org string) ([]string, error) {
	rows, err := r.pool.Query(ctx, `SELECT key_id FROM keys WHERE org_id = $1 AND status <> 'revoked' AND (expires_at IS NULL OR expires_at > $2) ORDER BY key_id`, org, r.now())
	if err != nil {
		return nil, classify(fmt.Errorf("active keys of %s: %w", org, err))
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, classify(fmt.Errorf("active keys of %s: %w", org, err))
	}
	return ids, nil
}
