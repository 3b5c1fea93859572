package domain

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

// The write engine: every command that changes an aggregate (a key or the
// permission catalog) goes load → decide → append, with optimistic
// concurrency on the aggregate's subject, and on conflict reloads and
// decides again a bounded number of times. The rules themselves (KeyState's
// and Catalog's methods) know nothing of this.

// aggregate is one aggregate the engine writes, of state S.
type aggregate[S any] struct {
	subject string
	name    string // as messages say it: "key key_…", "the permission catalog"
	// decode returns the state after ev, the last event on subject.
	decode func(ev Event) (S, error)
	// empty returns the state when subject holds no event (or the error
	// that is).
	empty func() (S, error)
}

func keyAggregate(org, keyID string) aggregate[KeyState] {
	return aggregate[KeyState]{
		subject: KeySubject(org, keyID),
		name:    "key " + keyID,
		decode:  Event.KeyState,
		empty:   func() (KeyState, error) { return KeyState{}, keyNotFound(org, keyID) },
	}
}

var catalogAggregate = aggregate[Catalog]{
	subject: CatalogSubject,
	name:    "the permission catalog",
	decode:  Event.Catalog,
	empty:   func() (Catalog, error) { return NewCatalog(nil), nil },
}

func keyNotFound(org, keyID string) error {
	return Errorf(ENotFound, "key %s not found in organization %s", keyID, org)
}

// write is one command's pass through the engine.
type write[S any] struct {
	aggregate[S]
	cmd command
	// evType is the type of the event the command appends on the
	// aggregate's subject: a landed event with the command's id and another
	// type means the id was reused for another command.
	evType string
	// retry reloads and decides again on conflict; false when the command
	// applies to one version only (expected_version).
	retry bool
}

// change is one event a command decided on.
type change[S any] struct {
	typ        string
	org, keyID string // the envelope's; both empty for a catalog event
	data       any    // the payload
	after      S      // the aggregate after the event
	// startsSubject marks the first event on its subject (a new key): it
	// is appended only if the subject is still empty.
	startsSubject bool
	// subj, when set, is the event's subject (an organization event);
	// expected, with subj, its subject's last sequence as the command read
	// it.
	subj     string
	expected uint64
	// roles marks an event of the role catalog (keyID empty).
	roles bool
}

// keyChange is the change of event typ with payload d on d's key.
func keyChange(typ string, d keyEventData) change[KeyState] {
	k := d.keyAfter()
	return change[KeyState]{typ: typ, org: k.OrgID, keyID: k.ID, data: d, after: k}
}

func (c change[S]) subject() string {
	if c.subj != "" {
		return c.subj
	}
	if c.roles {
		return RolesSubject
	}
	if c.keyID == "" {
		return CatalogSubject
	}
	return KeySubject(c.org, c.keyID)
}

// outcome is what a write did.
type outcome[S any] struct {
	state S // the aggregate as the command left it
	// changes are the events this call appended; nil when it appended
	// nothing (the command changed nothing, or had landed before).
	changes []change[S]
	seq     uint64 // the sequence of the command's last event (or of the aggregate's last one when nothing changed)
}

// loaded is an aggregate as its last event left it.
type loaded[S any] struct {
	state S
	event Event  // the last event (zero when there is none)
	seq   uint64 // its sequence (0 when there is none)
}

// load reads the last event on a's subject; found is false when there is
// none (state is then zero: the caller decides what that means).
func load[S any](ctx context.Context, store EventStore, a aggregate[S]) (l loaded[S], found bool, err error) {
	rec, ok, err := store.Last(ctx, a.subject)
	if err != nil {
		return loaded[S]{}, false, storeError(err)
	}
	if !ok {
		// The subject may hold messages the store set aside: the next
		// append must still expect the last of them.
		return loaded[S]{seq: rec.Guard()}, false, nil
	}
	ev, err := DecodeEvent(rec.Data)
	if err != nil {
		return loaded[S]{}, false, err
	}
	st, err := a.decode(ev)
	if err != nil {
		return loaded[S]{}, false, err
	}
	// The state is the last event the store vouches for; the guard of the
	// next append is the subject's last message, whatever it is, so that a
	// message set aside after it cannot make every append conflict.
	return loaded[S]{state: st, event: ev, seq: rec.Guard()}, true, nil
}

// mutate runs w: it loads the aggregate, lets decide choose the changes
// (none when the command changes nothing), and appends them atomically, each
// guarded by the subject's last sequence. With w.retry it reloads and
// decides again on conflict, up to MaxAttempts times.
//
// A conflict whose cause is this very command (its append landed but the
// reply was lost) counts as success: the command's events are recognized by
// its id, on the last event or, when others wrote after it, among the
// events since the first load (findCommand). A command id the client gave is
// looked for on the first attempt too, so a client resending a command whose
// reply it lost gets the aggregate as that command left it, and nothing is
// appended again (as long as no other change came in between; then the
// command is decided anew).
func mutate[S any](ctx context.Context, s *Service, w write[S], decide func(st S, now time.Time) ([]change[S], error)) (outcome[S], error) {
	var firstSeq uint64 // the subject's last sequence when this command first read it
	for attempt := 1; ; attempt++ {
		now := s.now()
		cur, found, err := load(ctx, s.Store, w.aggregate)
		if err != nil {
			return outcome[S]{}, err
		}
		if !found {
			if cur.state, err = w.empty(); err != nil {
				return outcome[S]{}, err
			}
		}
		mine := found && cur.event.CommandID == w.cmd.id
		if attempt == 1 {
			firstSeq = cur.seq
		} else if !mine && cur.seq > firstSeq {
			// Others appended since; one of our own attempts may be among
			// them (it landed, its reply was lost, then others wrote).
			if l, ok, err := findCommand(ctx, s.Store, w.aggregate, w.cmd.id, firstSeq, cur.seq); err != nil {
				return outcome[S]{}, err
			} else if ok {
				return w.landed(l)
			}
		}
		if mine && (attempt > 1 || w.cmd.byClient) {
			// Our earlier attempt (or the client's) landed; its reply was lost.
			return w.landed(cur)
		}
		changes, err := decide(cur.state, now)
		if err != nil {
			return outcome[S]{}, err
		}
		if len(changes) == 0 {
			return outcome[S]{state: cur.state, seq: cur.seq}, nil
		}
		msgs := make([]AppendMsg, 0, len(changes))
		for _, c := range changes {
			expected := cur.seq
			if c.startsSubject {
				expected = 0
			}
			msgID := w.cmd.id + ":" + msgSuffix(c.keyID)
			if c.subj != "" {
				msgID = w.cmd.id + ":org"
				if c.subj != w.subject {
					// An organization event riding along a key event is
					// guarded by its own subject's sequence; one on the
					// aggregate's own subject (set_policy) by cur.seq.
					expected = c.expected
				}
			}
			data, err := s.event(c.typ, c.org, c.keyID, now, w.cmd, expected, c.data)
			if err != nil {
				return outcome[S]{}, err
			}
			if c.roles {
				msgID = w.cmd.id + ":roles"
			}
			m := AppendMsg{Subject: c.subject(), ExpectedSequence: expected, MsgID: msgID, Type: c.typ, Data: data}
			msgs = append(msgs, m)
		}
		done := outcome[S]{state: changes[len(changes)-1].after, changes: changes}
		for _, c := range changes {
			if c.subj == "" { // an organization event rides along; its after is not S
				done.state = c.after
			}
		}
		done.seq, err = s.Store.Append(ctx, msgs...)
		if err == nil {
			return done, nil
		}
		if !errors.Is(err, ErrConflict) {
			return outcome[S]{}, storeError(err)
		}
		if !w.retry || attempt >= s.attempts() {
			// One more look: the conflict may be our own landed append.
			if l, found, lerr := load(ctx, s.Store, w.aggregate); lerr == nil && found && l.event.CommandID == w.cmd.id {
				done.seq = l.seq
				return done, nil
			}
			if !w.retry {
				return outcome[S]{}, Errorf(EConflict, "%s was changed concurrently; reload it and retry", w.name)
			}
			return outcome[S]{}, Errorf(EConflict, "%s is being changed by other writers; retry", w.name)
		}
	}
}

// landed is the outcome of a command found already stored as l, unless its
// id was used for another command.
func (w write[S]) landed(l loaded[S]) (outcome[S], error) {
	if l.event.Type != w.evType {
		return outcome[S]{}, Errorf(EInvalid, "command id %q was already used for another command on %s (%s); use a new Keyd-Command-Id", w.cmd.id, w.name, l.event.Type)
	}
	return outcome[S]{state: l.state, seq: l.seq}, nil
}

// findCommand looks for the event of command cmdID on a's subject among the
// events after `after` up to `upTo` (at most 64 of them), and returns the
// aggregate as that event left it.
func findCommand[S any](ctx context.Context, store EventStore, a aggregate[S], cmdID string, after, upTo uint64) (loaded[S], bool, error) {
	for range 64 {
		rec, ok, err := store.Next(ctx, a.subject, after)
		if err != nil {
			return loaded[S]{}, false, storeError(err)
		}
		if !ok || rec.Sequence > upTo {
			return loaded[S]{}, false, nil
		}
		// An event that does not decode is not one of ours: ours always do.
		if ev, err := DecodeEvent(rec.Data); err == nil && ev.CommandID == cmdID {
			st, err := a.decode(ev)
			if err != nil {
				return loaded[S]{}, false, err
			}
			return loaded[S]{state: st, event: ev, seq: rec.Sequence}, true, nil
		}
		after = rec.Sequence
	}
	return loaded[S]{}, false, nil
}

// msgSuffix completes an event's deduplication id, command id + ":" +
// suffix: the key id, or "catalog" for a catalog event.
func msgSuffix(keyID string) string {
	if keyID == "" {
		return "catalog"
	}
	return keyID
}

// event returns the encoded envelope of a command's event with payload data,
// to be appended expecting prev as its subject's last sequence.
func (s *Service) event(typ, org, keyID string, at time.Time, c command, prev uint64, data any) ([]byte, error) {
	id, err := s.newID()
	if err != nil {
		return nil, err
	}
	raw, err := json.Marshal(data)
	if err != nil {
		return nil, err
	}
	return json.Marshal(Event{ID: id, Type: typ, OrgID: org, KeyID: keyID, OccurredAt: at, Actor: c.actor, CommandID: c.id, PrevSequence: &prev, Data: raw})
}

// storeError turns an event-store failure into the error a caller sees:
// running out of time as Classify says, any other failure unavailable (the
// store could not be reached), with its cause kept for the logs.
func storeError(err error) error {
	var e *Error
	if err == nil || errors.As(err, &e) || timedOut(err) {
		return Classify(err, "the event store")
	}
	return Wrap(err, EUnavailable, "the event store is unavailable; retry")
}
