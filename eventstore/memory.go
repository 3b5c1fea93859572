package eventstore

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"

	"github.com/keyd-dev/keyd/domain"
)

// Memory is domain.EventStore in memory, for tests of the rules. It keeps
// the JetStream store's contract (and passes the same storetest suite):
//
//   - sequences start at 1 and are contiguous across all subjects, like a
//     stream's;
//   - an append of several messages stores all or none, each guarded by its
//     ExpectedSequence against the state before the append; a guard that does
//     not hold is ErrConflict;
//   - a MsgID is remembered forever (JetStream: for DuplicateWindow). A
//     single-message append whose MsgID is stored, as the first message on
//     its subject after its ExpectedSequence, is a duplicate: success with
//     the original sequence, nothing stored. A MsgID stored as any other
//     message is ErrConflict, and so is a stored MsgID in a multi-message
//     append (as JetStream's atomic batches answer);
//   - the same validation as JetStream (literal subjects under keyd.events.,
//     MsgID and Type set, no subject or MsgID twice in one append);
//   - Data is copied in and out: callers may reuse their buffers.
//
// It is safe for concurrent use. The zero value is not usable; call
// NewMemory.
type Memory struct {
	mu   sync.Mutex
	log  []memRecord       // log[i] has sequence i+1
	last map[string]uint64 // subject → sequence of its last message
	ids  map[string]uint64 // MsgID → sequence
	// signer, when set, signs every append, and Last and Next set aside
	// what it does not vouch for (as the JetStream store WithSigner).
	signer *domain.EventSigner
}

type memRecord struct {
	subject string
	prev    uint64 // sequence of the previous message on subject (0: none)
	msgID   string
	typ     string
	data    []byte
	sig     string // the signature header ("": none)
}

// NewMemory returns an empty in-memory event store.
func NewMemory() *Memory {
	return &Memory{last: map[string]uint64{}, ids: map[string]uint64{}}
}

// NewSignedMemory returns an empty in-memory event store that signs every
// append with signer and, in Last and Next, sets aside messages signer's key
// does not vouch for (every message is signed from sequence 1).
func NewSignedMemory(signer *domain.EventSigner) *Memory {
	m := NewMemory()
	m.signer = signer
	return m
}

// Forge stores a message as a foreign NATS client could publish it: on
// subject, with signature header sig ("": none), unguarded. For tests.
func (m *Memory) Forge(subject string, data []byte, sig string) uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.log = append(m.log, memRecord{subject: subject, prev: m.last[subject], data: slices.Clone(data), sig: sig})
	seq := uint64(len(m.log))
	m.last[subject] = seq
	return seq
}

// good reports whether the store vouches for r (always, without a signer).
func (m *Memory) good(r memRecord) bool {
	return m.signer == nil || m.signer.PublicKey().Verify(r.subject, r.data, r.sig) &&
		Chained(r.data, strconv.FormatUint(r.prev, 10))
}

// Append stores msgs atomically, each guarded by its ExpectedSequence, and
// returns the sequence of the last one.
func (m *Memory) Append(ctx context.Context, msgs ...domain.AppendMsg) (uint64, error) {
	if err := checkAppends(msgs); err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("eventstore: append: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()

	for _, a := range msgs {
		seq, stored := m.ids[a.MsgID]
		if !stored {
			continue
		}
		r := m.log[seq-1]
		if len(msgs) == 1 && r.subject == a.Subject && r.prev == a.ExpectedSequence {
			return seq, nil // a retry of an append that landed
		}
		return 0, conflict(a.Subject, a.ExpectedSequence,
			fmt.Errorf("%w (MsgID %s at sequence %d)", errMsgIDStored, a.MsgID, seq))
	}
	for _, a := range msgs {
		if got := m.last[a.Subject]; got != a.ExpectedSequence {
			return 0, conflict(a.Subject, a.ExpectedSequence, fmt.Errorf("last sequence is %d", got))
		}
	}
	for _, a := range msgs {
		r := memRecord{
			subject: a.Subject, prev: m.last[a.Subject], msgID: a.MsgID, typ: a.Type,
			data: slices.Clone(a.Data),
		}
		if m.signer != nil {
			r.sig = m.signer.Sign(a.Subject, a.Data)
		}
		m.log = append(m.log, r)
		seq := uint64(len(m.log))
		m.last[a.Subject] = seq
		m.ids[a.MsgID] = seq
	}
	return uint64(len(m.log)), nil
}

// Last returns the newest message on subject, or ok=false if it has none.
func (m *Memory) Last(ctx context.Context, subject string) (domain.Record, bool, error) {
	if err := checkSubject(subject); err != nil {
		return domain.Record{}, false, err
	}
	if err := ctx.Err(); err != nil {
		return domain.Record{}, false, fmt.Errorf("eventstore: last message on %s: %w", subject, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	head, ok := m.last[subject]
	if !ok {
		return domain.Record{}, false, nil
	}
	for seq := head; seq > 0; seq = m.log[seq-1].prev {
		if r := m.log[seq-1]; m.good(r) {
			return domain.Record{Subject: subject, Sequence: seq, Data: slices.Clone(r.data), Head: head}, true, nil
		}
	}
	return domain.Record{Head: head}, false, nil
}

// Next returns the first message on subject with a sequence above after.
func (m *Memory) Next(ctx context.Context, subject string, after uint64) (domain.Record, bool, error) {
	if err := checkSubject(subject); err != nil {
		return domain.Record{}, false, err
	}
	if err := ctx.Err(); err != nil {
		return domain.Record{}, false, fmt.Errorf("eventstore: next message on %s: %w", subject, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for seq := after + 1; seq <= uint64(len(m.log)); seq++ {
		if r := m.log[seq-1]; r.subject == subject && m.good(r) {
			return domain.Record{Subject: subject, Sequence: seq, Data: slices.Clone(r.data)}, true, nil
		}
	}
	return domain.Record{}, false, nil
}

// LastSequence returns the sequence of the newest message (0: none).
func (m *Memory) LastSequence(ctx context.Context) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return uint64(len(m.log)), nil
}

// Type returns the event type stored with the message at seq ("" if none).
// For tests: the JetStream store keeps it in the Keyd-Event-Type header.
func (m *Memory) Type(seq uint64) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if seq == 0 || seq > uint64(len(m.log)) {
		return ""
	}
	return m.log[seq-1].typ
}

var _ domain.EventStore = (*Memory)(nil)
