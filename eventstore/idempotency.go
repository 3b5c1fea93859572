package eventstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/keyd-dev/keyd/domain"
	"github.com/nats-io/nats.go/jetstream"
)

// IdempotencyBucket is the JetStream key-value bucket of KVIdempotency.
const IdempotencyBucket = "KEYD_IDEMPOTENCY"

// idemKey is the record's name: <org>.<hex sha256 of the idempotency key>.
func idemKey(org, key string) (string, error) {
	if !domain.ValidOrgID(org) {
		return "", fmt.Errorf("eventstore: idempotency: invalid org id %q", org)
	}
	sum := sha256.Sum256([]byte(key))
	return org + "." + hex.EncodeToString(sum[:]), nil
}

func expired(rec domain.IdempotencyRecord, now time.Time) bool {
	return !now.Before(rec.At.Add(domain.IdempotencyWindow))
}

func newRecord(keyID string, now time.Time) domain.IdempotencyRecord {
	return domain.IdempotencyRecord{KeyID: keyID, At: now.UTC().Round(0)}
}

// KVIdempotency is domain.IdempotencyStore on the JetStream key-value bucket
// KEYD_IDEMPOTENCY. Values are the JSON of domain.IdempotencyRecord; the
// revision is the KV revision. It and MemoryIdempotency share this contract:
//
//   - a record is stored under (org, key); the key itself is never stored,
//     only its SHA-256 (org.<hex sha256(key)>);
//   - Reserve stores {keyID, now} unless a live record exists, which it
//     returns (with its Revision) and reserved=false. A record is live for
//     domain.IdempotencyWindow after its At, judged by the now given to
//     Reserve; an expired record counts as absent and Reserve takes its
//     place. (KVIdempotency's bucket also drops records after the window by
//     the server's clock, so storage stays bounded.)
//   - Replace stores {keyID, now} only if the record is still at
//     old.Revision; otherwise replaced=false and nil error. (An expired
//     record may vanish at any time; Replace of it is then false.)
//   - Release deletes the record only if it is still at the revision of
//     the record given (as Reserve or Replace left it); anything else (a
//     record replaced since, no record) is a no-op, not an error.
//   - records carry Revision: a number that changes on every write of that
//     (org, key).
//
// KVIdempotency keeps records across restarts (file storage).
type KVIdempotency struct {
	kv jetstream.KeyValue
}

// NewKVIdempotency creates or updates the KEYD_IDEMPOTENCY bucket (TTL
// domain.IdempotencyWindow, file storage, history 1, the given replicas) and
// returns the store on it. Like EnsureStream, it never lowers the replicas
// of an existing bucket.
func NewKVIdempotency(ctx context.Context, js jetstream.JetStream, replicas int) (*KVIdempotency, error) {
	kv, err := EnsureBucket(ctx, js, jetstream.KeyValueConfig{
		Bucket:      IdempotencyBucket,
		Description: "keyd: idempotency keys of create",
		History:     1,
		TTL:         domain.IdempotencyWindow,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
	})
	if err != nil {
		return nil, err
	}
	return &KVIdempotency{kv: kv}, nil
}

// get returns the record under k (ok=false: none).
func (s *KVIdempotency) get(ctx context.Context, k string) (domain.IdempotencyRecord, bool, error) {
	e, err := s.kv.Get(ctx, k)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return domain.IdempotencyRecord{}, false, nil
	}
	if err != nil {
		return domain.IdempotencyRecord{}, false, fmt.Errorf("eventstore: idempotency record %s: %w", k, err)
	}
	var rec domain.IdempotencyRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return domain.IdempotencyRecord{}, false, fmt.Errorf("eventstore: idempotency record %s is not valid JSON", k)
	}
	rec.Revision = e.Revision()
	return rec, true, nil
}

// maxCASRounds bounds the read-compare-write loops against writers that
// keep changing the same record.
const maxCASRounds = 5

// Reserve records keyID for (org, key) unless a live record exists; then it
// returns that record and reserved=false.
// A write the server refuses for lack of space is an error that errors.Is
// ErrNoSpace (nothing was stored; see JetStream), as in Replace.
func (s *KVIdempotency) Reserve(ctx context.Context, org, key, keyID string, now time.Time) (domain.IdempotencyRecord, bool, error) {
	k, err := idemKey(org, key)
	if err != nil {
		return domain.IdempotencyRecord{}, false, err
	}
	rec := newRecord(keyID, now)
	val, _ := json.Marshal(rec)
	for range maxCASRounds {
		rev, err := s.kv.Create(ctx, k, val)
		if err == nil {
			rec.Revision = rev
			return rec, true, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return domain.IdempotencyRecord{}, false, mapNoSpace(fmt.Errorf("eventstore: reserving idempotency record %s: %w", k, err))
		}
		cur, ok, err := s.get(ctx, k)
		if err != nil {
			return domain.IdempotencyRecord{}, false, err
		}
		if !ok {
			continue // deleted or expired since Create: try again
		}
		if !expired(cur, now) {
			return cur, false, nil
		}
		rev, err = s.kv.Update(ctx, k, val, cur.Revision)
		if err == nil {
			rec.Revision = rev
			return rec, true, nil
		}
		if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return domain.IdempotencyRecord{}, false, mapNoSpace(fmt.Errorf("eventstore: reserving idempotency record %s: %w", k, err))
		}
	}
	return domain.IdempotencyRecord{}, false, fmt.Errorf("eventstore: reserving idempotency record %s: changed by others %d times in a row", k, maxCASRounds)
}

// Replace swaps the record, if it is still at old.Revision, for keyID.
func (s *KVIdempotency) Replace(ctx context.Context, org, key string, old domain.IdempotencyRecord, keyID string, now time.Time) (bool, error) {
	k, err := idemKey(org, key)
	if err != nil {
		return false, err
	}
	if old.Revision == 0 {
		return false, nil // never read from this store
	}
	val, _ := json.Marshal(newRecord(keyID, now))
	_, err = s.kv.Update(ctx, k, val, old.Revision)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return false, nil
	}
	if err != nil {
		return false, mapNoSpace(fmt.Errorf("eventstore: replacing idempotency record %s: %w", k, err))
	}
	return true, nil
}

// Release deletes the record if it is still at rec.Revision: one delete
// guarded by the revision.
func (s *KVIdempotency) Release(ctx context.Context, org, key string, rec domain.IdempotencyRecord) error {
	k, err := idemKey(org, key)
	if err != nil {
		return err
	}
	if rec.Revision == 0 {
		return nil // never read from this store
	}
	err = s.kv.Delete(ctx, k, jetstream.LastRevision(rec.Revision))
	if err == nil || errors.Is(err, jetstream.ErrKeyRevisionMismatch) || isWrongLastSeq(err) {
		return nil
	}
	return fmt.Errorf("eventstore: releasing idempotency record %s: %w", k, err)
}

var _ domain.IdempotencyStore = (*KVIdempotency)(nil)

// MemoryIdempotency is domain.IdempotencyStore in memory, with KVIdempotency's
// contract (records expire by the now passed to Reserve). Safe for concurrent
// use; the zero value is not usable, call NewMemoryIdempotency.
type MemoryIdempotency struct {
	mu        sync.Mutex
	recs      map[string]domain.IdempotencyRecord
	rev       uint64
	lastSweep time.Time
}

// NewMemoryIdempotency returns an empty in-memory idempotency store.
func NewMemoryIdempotency() *MemoryIdempotency {
	return &MemoryIdempotency{recs: map[string]domain.IdempotencyRecord{}}
}

// Reserve records keyID for (org, key) unless a live record exists; then it
// returns that record and reserved=false.
func (m *MemoryIdempotency) Reserve(ctx context.Context, org, key, keyID string, now time.Time) (domain.IdempotencyRecord, bool, error) {
	k, err := idemKey(org, key)
	if err != nil {
		return domain.IdempotencyRecord{}, false, err
	}
	if err := ctx.Err(); err != nil {
		return domain.IdempotencyRecord{}, false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sweep(now)
	if cur, ok := m.recs[k]; ok && !expired(cur, now) {
		return cur, false, nil
	}
	rec := m.put(k, keyID, now)
	return rec, true, nil
}

// Replace swaps the record, if it is still at old.Revision, for keyID.
func (m *MemoryIdempotency) Replace(ctx context.Context, org, key string, old domain.IdempotencyRecord, keyID string, now time.Time) (bool, error) {
	k, err := idemKey(org, key)
	if err != nil {
		return false, err
	}
	if err := ctx.Err(); err != nil {
		return false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	cur, ok := m.recs[k]
	if !ok || old.Revision == 0 || cur.Revision != old.Revision {
		return false, nil
	}
	m.put(k, keyID, now)
	return true, nil
}

// Release deletes the record if it is still at rec.Revision.
func (m *MemoryIdempotency) Release(ctx context.Context, org, key string, rec domain.IdempotencyRecord) error {
	k, err := idemKey(org, key)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if cur, ok := m.recs[k]; ok && rec.Revision != 0 && cur.Revision == rec.Revision {
		delete(m.recs, k)
		m.rev++ // as a KV delete marker takes a revision
	}
	return nil
}

func (m *MemoryIdempotency) put(k, keyID string, now time.Time) domain.IdempotencyRecord {
	m.rev++
	rec := newRecord(keyID, now)
	rec.Revision = m.rev
	m.recs[k] = rec
	return rec
}

// sweep drops expired records, at most once a minute of the given clock, so
// memory stays bounded by what was reserved within one window.
func (m *MemoryIdempotency) sweep(now time.Time) {
	if now.Sub(m.lastSweep) < time.Minute {
		return
	}
	m.lastSweep = now
	for k, rec := range m.recs {
		if expired(rec, now) {
			delete(m.recs, k)
		}
	}
}

var _ domain.IdempotencyStore = (*MemoryIdempotency)(nil)
