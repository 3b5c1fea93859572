package domain

import (
	"context"
	"time"
)

// Record is one stored message of the event stream.
type Record struct {
	Subject  string
	Sequence uint64 // stream sequence
	Data     []byte // the JSON event envelope
	// Head, set by EventStore.Last, is the sequence of the subject's last
	// message of any kind: the ExpectedSequence of the next append there.
	// It is above Sequence when messages the store set aside (not signed
	// by keyd) follow the last event it vouches for, and it may be set
	// with ok=false when the subject holds only such messages. 0 means
	// Sequence.
	Head uint64
}

// Guard returns the sequence the next append on r's subject must expect:
// Head, or Sequence when Head is not set.
func (r Record) Guard() uint64 { return max(r.Head, r.Sequence) }

// AppendMsg is one message to append. ExpectedSequence is the sequence of
// the last message on Subject that the writer saw (0: the subject must be
// empty).
type AppendMsg struct {
	Subject          string
	ExpectedSequence uint64
	MsgID            string // deduplication id (the event id)
	Type             string // event type, also sent as the Keyd-Event-Type header
	Data             []byte
}

// EventStore is the append-only log keyd's state lives in.
//
// Implementations: eventstore.JetStream (the real one) and eventstore.Memory
// (for tests of the rules); both pass eventstore/storetest.
type EventStore interface {
	// Append appends msgs atomically (all or none), each guarded by its
	// ExpectedSequence, and returns the sequence of the last one. A guard that
	// does not hold is ErrConflict. An append whose outcome is unknown
	// (a lost reply) may be retried with the same MsgIDs; it is never stored
	// twice.
	Append(ctx context.Context, msgs ...AppendMsg) (uint64, error)
	// Last returns the newest message on subject that the store vouches
	// for (signed by keyd), or ok=false if there is none; rec.Head is the
	// subject's last sequence whatever it holds (see Record). It costs one
	// lookup whatever the stream's length, more only when messages it sets
	// aside follow the last good one.
	Last(ctx context.Context, subject string) (rec Record, ok bool, err error)
	// Next returns the first message on subject whose sequence is above
	// after that the store vouches for, or ok=false if there is none. It reads what the stream's
	// writer has stored (not a possibly lagging replica).
	Next(ctx context.Context, subject string, after uint64) (rec Record, ok bool, err error)
}

// IdempotencyRecord is what an idempotency key of create points to.
type IdempotencyRecord struct {
	KeyID    string    `json:"key_id"`
	At       time.Time `json:"at"`
	Revision uint64    `json:"-"`
}

// IdempotencyWindow is how long a create's idempotency key holds.
const IdempotencyWindow = 24 * time.Hour

// IdempotencyStore remembers, for IdempotencyWindow and across restarts,
// which key a create with an idempotency key made.
//
// Implementations: eventstore.KVIdempotency (a JetStream key-value bucket)
// and eventstore.MemoryIdempotency.
type IdempotencyStore interface {
	// Reserve records keyID for (org, key) unless a record exists; then it
	// returns that record and reserved=false.
	Reserve(ctx context.Context, org, key, keyID string, now time.Time) (rec IdempotencyRecord, reserved bool, err error)
	// Replace swaps a record (unchanged since old was read) for keyID at
	// now, with a new Revision; replaced=false if another writer changed it
	// first.
	Replace(ctx context.Context, org, key string, old IdempotencyRecord, keyID string, now time.Time) (replaced bool, err error)
	// Release removes the record if it is still at rec.Revision (the one
	// Reserve or Replace returned): a record someone has since replaced
	// stays.
	Release(ctx context.Context, org, key string, rec IdempotencyRecord) error
}
