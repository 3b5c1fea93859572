package domain

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oklog/ulid/v2"
)

// Service runs commands: load the aggregate (one read of the last event on
// its subject, which carries its full state), decide, append the events with
// optimistic concurrency on the subject, and retry a bounded number of times
// on conflict where the command allows it.
//
// Every method returns *Error values with the contract's codes:
// invalid_argument for bad input, not_found for an unknown key (or a key of
// another organization), failed_precondition for a change a key's state
// forbids, conflict when expected_version does not match or retries ran out,
// unavailable when the event store cannot be reached.
type Service struct {
	Store       EventStore
	Idempotency IdempotencyStore
	Digester    *Digester
	// Prefix starts new secrets (DefaultPrefix if empty).
	Prefix string
	// Now is the clock; Rand the random source for secrets and ids (it must
	// be safe for concurrent use, e.g. crypto/rand.Reader).
	Now  func() time.Time
	Rand io.Reader
	// MaxAttempts bounds the attempts of a retryable command (default 5).
	MaxAttempts int

	// catalog is the last catalog Catalog decoded, with the event it came
	// from: reused while the last catalog event is byte for byte the same.
	catalog atomic.Pointer[decodedCatalog]

	idMu sync.Mutex
	ids  *ulid.MonotonicEntropy
}

type decodedCatalog struct {
	seq     uint64
	data    []byte
	catalog Catalog // immutable (Define and Retire return new ones)
}

// CreateKeyResult is the reply to create. Secret is empty when the reply
// repeats an earlier create with the same idempotency key.
type CreateKeyResult struct {
	Key      KeyView `json:"key"`
	Secret   string  `json:"secret,omitempty"`
	Sequence uint64  `json:"sequence"`
}

// KeyResult is the reply to revoke, set_permissions and update.
type KeyResult struct {
	Key      KeyView `json:"key"`
	Sequence uint64  `json:"sequence"`
}

// RotateKeyResult is the reply to rotate.
type RotateKeyResult struct {
	Key      KeyView `json:"key"`
	Secret   string  `json:"secret,omitempty"`
	Previous KeyView `json:"previous"`
	Sequence uint64  `json:"sequence"`
}

// PermissionResult is the reply to define and retire.
type PermissionResult struct {
	Permission Permission `json:"permission"`
	Sequence   uint64     `json:"sequence"`
}

// staleReservation is how old an idempotency reservation whose key never
// appeared must be before another create may take it over (the first create
// crashed between reserving and appending).
const staleReservation = 30 * time.Second

var defaultActor = Actor{Type: "system", ID: "keyd"}

func (s *Service) now() time.Time { return s.Now().UTC().Truncate(time.Millisecond) }

func (s *Service) attempts() int {
	if s.MaxAttempts > 0 {
		return s.MaxAttempts
	}
	return 5
}

func actorOr(a *Actor) Actor {
	if a == nil {
		return defaultActor
	}
	return *a
}

// storeError turns an event-store failure into the error a caller sees.
func storeError(err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return Errorf(EUnavailable, "the event store did not answer in time; retry")
	}
	return &wrapped{user: Errorf(EUnavailable, "the event store is unavailable; retry"), cause: err}
}

// wrapped keeps an internal cause (for logs) behind a user-facing *Error.
type wrapped struct {
	user  *Error
	cause error
}

func (w *wrapped) Unwrap() []error { return []error{w.user, w.cause} }
func (w *wrapped) Error() string   { return w.user.Error() + " (" + w.cause.Error() + ")" }

// LoadKey returns the current state of a key and the sequence of its last
// event. Errors: invalid_argument for malformed ids, not_found.
func (s *Service) LoadKey(ctx context.Context, org, keyID string) (KeyState, uint64, error) {
	if !ValidOrgID(org) {
		return KeyState{}, 0, Errorf(EInvalid, "organization id %q must match ^[A-Za-z0-9_-]{1,64}$", org)
	}
	if !ValidKeyID(keyID) {
		return KeyState{}, 0, Errorf(EInvalid, "key id %q is not a key id (key_ followed by a 26-character ULID)", keyID)
	}
	k, rec, ok, err := s.loadKey(ctx, org, keyID)
	if err != nil {
		return KeyState{}, 0, err
	}
	if !ok {
		return KeyState{}, 0, Errorf(ENotFound, "key %s not found in organization %s", keyID, org)
	}
	return k, rec.Sequence, nil
}

func (s *Service) loadKey(ctx context.Context, org, keyID string) (KeyState, Record, bool, error) {
	rec, ok, err := s.Store.Last(ctx, KeySubject(org, keyID))
	if err != nil || !ok {
		return KeyState{}, Record{}, false, storeError(err)
	}
	ev, err := DecodeEvent(rec.Data)
	if err != nil {
		return KeyState{}, Record{}, false, err
	}
	k, err := ev.KeyState()
	if err != nil {
		return KeyState{}, Record{}, false, err
	}
	return k, rec, true, nil
}

// lastCommandID returns the command id on the event of rec.
func lastCommandID(rec Record) string {
	id, _ := lastCommand(rec)
	return id
}

// lastCommand returns the command id and the event type of rec.
func lastCommand(rec Record) (cmdID, typ string) {
	var e struct {
		CommandID string `json:"command_id"`
		Type      string `json:"type"`
	}
	_ = json.Unmarshal(rec.Data, &e)
	return e.CommandID, e.Type
}

// Catalog returns the current permission catalog and the sequence of its
// last event (0 when empty).
func (s *Service) Catalog(ctx context.Context) (Catalog, uint64, error) {
	rec, ok, err := s.Store.Last(ctx, CatalogSubject)
	if err != nil {
		return Catalog{}, 0, storeError(err)
	}
	if !ok {
		return NewCatalog(nil), 0, nil
	}
	// Every create reads the catalog; decoding it again is most of what
	// that costs once it is read, and it rarely changes.
	if d := s.catalog.Load(); d != nil && d.seq == rec.Sequence && bytes.Equal(d.data, rec.Data) {
		return d.catalog, rec.Sequence, nil
	}
	ev, err := DecodeEvent(rec.Data)
	if err != nil {
		return Catalog{}, 0, err
	}
	c, err := ev.Catalog()
	if err == nil {
		s.catalog.Store(&decodedCatalog{seq: rec.Sequence, data: rec.Data, catalog: c})
	}
	return c, rec.Sequence, err
}

// newID returns a ULID for now. IDs made by one Service increase strictly,
// even within one millisecond (monotonic entropy), so key ids sort in
// creation order ("newest first" lists) for the keys a process creates.
func (s *Service) newID() (string, error) {
	s.idMu.Lock()
	defer s.idMu.Unlock()
	if s.ids == nil {
		s.ids = ulid.Monotonic(s.Rand, 0)
	}
	return NewULID(s.Now(), s.ids)
}

func (s *Service) commandID(given string) (string, error) {
	if given != "" {
		if len(given) > 128 {
			return "", Errorf(EInvalid, "command id must be at most 128 bytes")
		}
		return given, nil
	}
	return s.newID()
}

// event builds an envelope around data.
func (s *Service) event(typ, org, keyID string, at time.Time, actor Actor, cmdID string, data any) (Event, []byte, error) {
	id, err := s.newID()
	if err != nil {
		return Event{}, nil, err
	}
	raw, err := json.Marshal(data)
	if err != nil {
		return Event{}, nil, err
	}
	e := Event{ID: id, Type: typ, OrgID: org, KeyID: keyID, OccurredAt: at, Actor: actor, CommandID: cmdID, Data: raw}
	b, err := json.Marshal(e)
	return e, b, err
}

// CreateKey creates a key and returns it with its secret, which exists
// nowhere else. With an idempotency key already used by this organization in
// the last 24 hours it returns the first key, without a secret, and appends
// nothing.
func (s *Service) CreateKey(ctx context.Context, org string, cmd CreateKey) (CreateKeyResult, error) {
	now := s.now()
	if !ValidOrgID(org) {
		return CreateKeyResult{}, Errorf(EInvalid, "organization id %q must match ^[A-Za-z0-9_-]{1,64}$", org)
	}
	if err := CheckName(cmd.Name); err != nil {
		return CreateKeyResult{}, err
	}
	if err := CheckMetadata(cmd.Metadata); err != nil {
		return CreateKeyResult{}, err
	}
	if err := CheckActor(cmd.Actor); err != nil {
		return CreateKeyResult{}, err
	}
	perms, err := NormalizePermissions(cmd.Permissions)
	if err != nil {
		return CreateKeyResult{}, err
	}
	if len(cmd.IdempotencyKey) > 200 {
		return CreateKeyResult{}, Errorf(EInvalid, "idempotency_key must be at most 200 bytes")
	}
	cmdID, err := s.commandID(cmd.CommandID)
	if err != nil {
		return CreateKeyResult{}, err
	}
	ulid, err := s.newID()
	if err != nil {
		return CreateKeyResult{}, err
	}
	keyID := KeyIDPrefix + ulid

	// A client-given command id makes a resent create idempotent too, as an
	// idempotency key scoped to command ids.
	idem := cmd.IdempotencyKey
	if idem == "" && cmd.CommandID != "" {
		idem = "keyd-command-id:" + cmd.CommandID
	}
	if idem != "" {
		if s.Idempotency == nil {
			return CreateKeyResult{}, Errorf(EUnavailable, "idempotency keys are not available on this server")
		}
		rec, reserved, err := s.Idempotency.Reserve(ctx, org, idem, keyID, now)
		if err != nil {
			return CreateKeyResult{}, storeError(err)
		}
		if !reserved {
			k, last, ok, err := s.loadKey(ctx, org, rec.KeyID)
			if err != nil {
				return CreateKeyResult{}, err
			}
			if ok {
				return CreateKeyResult{Key: k.View(now, nil), Sequence: last.Sequence}, nil
			}
			if now.Sub(rec.At) < staleReservation {
				return CreateKeyResult{}, Errorf(EConflict, "a create with this idempotency_key is still in progress; retry in a moment")
			}
			replaced, err := s.Idempotency.Replace(ctx, org, idem, rec, keyID, now)
			if err != nil {
				return CreateKeyResult{}, storeError(err)
			}
			if !replaced {
				return CreateKeyResult{}, Errorf(EConflict, "a create with this idempotency_key is in progress; retry in a moment")
			}
		}
	}
	// The rules that depend on time and on the catalog come after the
	// idempotency lookup: a repeated create gets the first key even when its
	// expires_at has passed or a permission was retired since.
	res, attempted, err := s.createChecked(ctx, org, keyID, cmdID, cmd, perms, now)
	if err != nil && idem != "" && !(attempted && maybeAppended(err)) {
		_ = s.Idempotency.Release(context.WithoutCancel(ctx), org, idem, keyID)
	}
	return res, err
}

// maybeAppended reports whether a failed create may still have stored its
// event (the store did not answer, or the conflict could not be resolved):
// its idempotency reservation must then stay, so that a retry finds the key
// (or, once the reservation is stale and no key appeared, takes it over).
func maybeAppended(err error) bool {
	switch ErrorCode(err) {
	case EUnavailable, EConflict, EInternal:
		return true
	}
	return false
}

// createChecked checks expires_at and the catalog, then appends the key;
// attempted tells whether the append was tried.
func (s *Service) createChecked(ctx context.Context, org, keyID, cmdID string, cmd CreateKey, perms []string, now time.Time) (_ CreateKeyResult, attempted bool, _ error) {
	var expires *time.Time
	if cmd.ExpiresAt != nil {
		t := cmd.ExpiresAt.UTC().Truncate(time.Millisecond)
		if !t.After(now) {
			return CreateKeyResult{}, false, Errorf(EInvalid, "expires_at %s is not in the future", cmd.ExpiresAt.UTC().Format(time.RFC3339))
		}
		expires = &t
	}
	catalog, _, err := s.Catalog(ctx)
	if err != nil {
		return CreateKeyResult{}, false, err
	}
	if err := catalog.CheckGrantable(perms); err != nil {
		return CreateKeyResult{}, false, err
	}
	res, err := s.appendNewKey(ctx, org, keyID, cmdID, cmd, perms, expires, now)
	return res, true, err
}

func (s *Service) appendNewKey(ctx context.Context, org, keyID, cmdID string, cmd CreateKey, perms []string, expires *time.Time, now time.Time) (CreateKeyResult, error) {
	prefix := s.Prefix
	if prefix == "" {
		prefix = DefaultPrefix
	}
	secret, err := NewSecret(prefix, s.Rand)
	if err != nil {
		return CreateKeyResult{}, err
	}
	k := s.newKeyState(org, keyID, cmd.Name, secret, perms, cmd.Metadata, expires, now)
	_, data, err := s.event(EventKeyCreated, org, keyID, now, actorOr(cmd.Actor), cmdID,
		KeyCreatedData{Key: k, IdempotencyKey: cmd.IdempotencyKey})
	if err != nil {
		return CreateKeyResult{}, err
	}
	seq, err := s.Store.Append(ctx, Append{Subject: KeySubject(org, keyID), MsgID: cmdID + ":" + keyID, Type: EventKeyCreated, Data: data})
	if errors.Is(err, ErrConflict) {
		// The subject already holds an event: our own append, landed before
		// its reply was lost, or (astronomically unlikely) an id collision.
		got, rec, ok, lerr := s.loadKey(ctx, org, keyID)
		if lerr == nil && ok && lastCommandID(rec) == cmdID && got.Version == 1 {
			return CreateKeyResult{Key: got.View(now, nil), Secret: secret, Sequence: rec.Sequence}, nil
		}
		return CreateKeyResult{}, Errorf(EConflict, "key id %s is already taken; retry", keyID)
	}
	if err != nil {
		return CreateKeyResult{}, storeError(err)
	}
	return CreateKeyResult{Key: k.View(now, nil), Secret: secret, Sequence: seq}, nil
}

func (s *Service) newKeyState(org, keyID, name, secret string, perms []string, md map[string]string, expires *time.Time, now time.Time) KeyState {
	d := s.Digester.Digest(secret)
	if perms == nil {
		perms = []string{}
	}
	if md == nil {
		md = map[string]string{}
	}
	return KeyState{
		ID: keyID, OrgID: org, Name: name, Owner: Owner{Type: "organization", ID: org},
		Mask: Mask(secret), Digest: hex.EncodeToString(d[:]), Permissions: perms,
		Status: StatusActive, CreatedAt: now, ExpiresAt: expires, Metadata: md, Version: 1,
	}
}

// change is one event a key command decided on.
type change struct {
	typ   string
	state KeyState // the key after the event
	data  any
	// isNew marks the event that creates a key (its subject must be empty).
	isNew bool
}

// mutate loads the key, lets decide choose the changes, and appends them.
// decide returns no changes when the command changes nothing. With retry it
// reloads and decides again on conflict, up to MaxAttempts times. A conflict
// whose cause is this very command (its append landed but the reply was
// lost) counts as success.
//
// A command id given by the client (clientID) is also looked for on the
// first attempt: a client resending a command whose reply it lost gets the
// key as that command left it, and nothing is appended again (as long as no
// other change came in between; then the command is decided anew).
func (s *Service) mutate(ctx context.Context, org, keyID, cmdID string, clientID bool, evType string, actor Actor, retry bool,
	decide func(k KeyState, now time.Time) ([]change, error)) (KeyState, []change, uint64, error) {
	if !ValidOrgID(org) {
		return KeyState{}, nil, 0, Errorf(EInvalid, "organization id %q must match ^[A-Za-z0-9_-]{1,64}$", org)
	}
	if !ValidKeyID(keyID) {
		return KeyState{}, nil, 0, Errorf(EInvalid, "key id %q is not a key id (key_ followed by a 26-character ULID)", keyID)
	}
	var firstSeq uint64 // the key's last sequence when this command first read it
	for attempt := 1; ; attempt++ {
		now := s.now()
		k, rec, ok, err := s.loadKey(ctx, org, keyID)
		if err != nil {
			return KeyState{}, nil, 0, err
		}
		if !ok {
			return KeyState{}, nil, 0, Errorf(ENotFound, "key %s not found in organization %s", keyID, org)
		}
		if attempt == 1 {
			firstSeq = rec.Sequence
		} else if lastCommandID(rec) != cmdID && rec.Sequence > firstSeq {
			// Others appended since; one of our own attempts may be among
			// them (it landed, its reply was lost, then others wrote).
			if found, fk, fseq, typ, err := s.findCommand(ctx, KeySubject(org, keyID), firstSeq, rec.Sequence, cmdID); err != nil {
				return KeyState{}, nil, 0, err
			} else if found {
				if typ != evType {
					return KeyState{}, nil, 0, Errorf(EInvalid, "command id %q was already used for another command on key %s (%s); use a new Keyd-Command-Id", cmdID, keyID, typ)
				}
				return fk, nil, fseq, nil
			}
		}
		if id, typ := lastCommand(rec); (attempt > 1 || clientID) && id == cmdID {
			if typ != evType {
				return KeyState{}, nil, 0, Errorf(EInvalid, "command id %q was already used for another command on key %s (%s); use a new Keyd-Command-Id", cmdID, keyID, typ)
			}
			// Our earlier attempt (or the client's) landed; its reply was lost.
			return k, nil, rec.Sequence, nil
		}
		changes, err := decide(k, now)
		if err != nil {
			return KeyState{}, nil, 0, err
		}
		if len(changes) == 0 {
			return k, nil, rec.Sequence, nil
		}
		msgs := make([]Append, 0, len(changes))
		for _, c := range changes {
			_, data, err := s.event(c.typ, c.state.OrgID, c.state.ID, now, actor, cmdID, c.data)
			if err != nil {
				return KeyState{}, nil, 0, err
			}
			expected := rec.Sequence
			if c.isNew {
				expected = 0
			}
			msgs = append(msgs, Append{Subject: KeySubject(c.state.OrgID, c.state.ID), ExpectedSequence: expected,
				MsgID: cmdID + ":" + c.state.ID, Type: c.typ, Data: data})
		}
		seq, err := s.Store.Append(ctx, msgs...)
		if err == nil {
			return k, changes, seq, nil
		}
		if !errors.Is(err, ErrConflict) {
			return KeyState{}, nil, 0, storeError(err)
		}
		if !retry || attempt >= s.attempts() {
			// One more look: the conflict may be our own landed append.
			if _, rec, ok, lerr := s.loadKey(ctx, org, keyID); lerr == nil && ok && lastCommandID(rec) == cmdID {
				return k, changes, rec.Sequence, nil
			}
			if !retry {
				return KeyState{}, nil, 0, Errorf(EConflict, "key %s was changed concurrently; reload it and retry", keyID)
			}
			return KeyState{}, nil, 0, Errorf(EConflict, "key %s is being changed by other writers; retry", keyID)
		}
	}
}

// findCommand looks for the event of command cmdID on subject among the
// messages after `after` up to `upTo` (at most 64 of them), and returns the
// key's state after that event, its sequence and its type.
func (s *Service) findCommand(ctx context.Context, subject string, after, upTo uint64, cmdID string) (found bool, k KeyState, seq uint64, typ string, err error) {
	for range 64 {
		rec, ok, err := s.Store.Next(ctx, subject, after)
		if err != nil {
			return false, KeyState{}, 0, "", storeError(err)
		}
		if !ok || rec.Sequence > upTo {
			return false, KeyState{}, 0, "", nil
		}
		if lastCommandID(rec) == cmdID {
			ev, err := DecodeEvent(rec.Data)
			if err != nil {
				return false, KeyState{}, 0, "", err
			}
			k, err := ev.KeyState()
			return err == nil, k, rec.Sequence, ev.Type, err
		}
		after = rec.Sequence
	}
	return false, KeyState{}, 0, "", nil
}

// RevokeKey revokes a key. Revoking a revoked key replies with the key as it
// is and appends nothing.
func (s *Service) RevokeKey(ctx context.Context, org string, cmd RevokeKey) (KeyResult, error) {
	if err := CheckActor(cmd.Actor); err != nil {
		return KeyResult{}, err
	}
	if len(cmd.Reason) > MaxReasonLength {
		return KeyResult{}, Errorf(EInvalid, "reason must be at most %d bytes", MaxReasonLength)
	}
	cmdID, err := s.commandID(cmd.CommandID)
	if err != nil {
		return KeyResult{}, err
	}
	k, changes, seq, err := s.mutate(ctx, org, cmd.KeyID, cmdID, cmd.CommandID != "", EventKeyRevoked, actorOr(cmd.Actor), true, func(k KeyState, now time.Time) ([]change, error) {
		if k.Status == StatusRevoked {
			return nil, nil
		}
		n := k.clone()
		n.Status, n.RevokedAt, n.RevokeReason, n.Version = StatusRevoked, &now, cmd.Reason, k.Version+1
		return []change{{typ: EventKeyRevoked, state: n, data: KeyRevokedData{Reason: cmd.Reason, Key: n}}}, nil
	})
	return s.keyResult(k, changes, seq, err)
}

// SetPermissions replaces a key's permissions. Every permission must be
// defined and active. With ExpectedVersion the command applies only to that
// version (conflict otherwise) and is not retried.
func (s *Service) SetPermissions(ctx context.Context, org string, cmd SetPermissions) (KeyResult, error) {
	if err := CheckActor(cmd.Actor); err != nil {
		return KeyResult{}, err
	}
	if cmd.Permissions == nil {
		return KeyResult{}, Errorf(EInvalid, "permissions is required (an array of slugs; [] removes all)")
	}
	perms, err := NormalizePermissions(cmd.Permissions)
	if err != nil {
		return KeyResult{}, err
	}
	cmdID, err := s.commandID(cmd.CommandID)
	if err != nil {
		return KeyResult{}, err
	}
	k, changes, seq, err := s.mutate(ctx, org, cmd.KeyID, cmdID, cmd.CommandID != "", EventKeyPermissionsChanged, actorOr(cmd.Actor), cmd.ExpectedVersion == nil, func(k KeyState, now time.Time) ([]change, error) {
		// Read on every attempt: a retire that landed meanwhile counts.
		catalog, _, err := s.Catalog(ctx)
		if err != nil {
			return nil, err
		}
		if err := catalog.CheckGrantable(perms); err != nil {
			return nil, err
		}
		if cmd.ExpectedVersion != nil && *cmd.ExpectedVersion != k.Version {
			return nil, Errorf(EConflict, "key %s is at version %d, not the expected version %d", k.ID, k.Version, *cmd.ExpectedVersion)
		}
		if err := k.checkMutable(now, "changed"); err != nil {
			return nil, err
		}
		if slices.Equal(k.Permissions, perms) {
			return nil, nil
		}
		n := k.clone()
		n.Permissions, n.Version = perms, k.Version+1
		return []change{{typ: EventKeyPermissionsChanged, state: n,
			data: KeyPermissionsChangedData{Permissions: perms, Previous: k.Permissions, Key: n}}}, nil
	})
	return s.keyResult(k, changes, seq, err)
}

// UpdateKey renames a key and/or replaces its metadata.
func (s *Service) UpdateKey(ctx context.Context, org string, cmd UpdateKey) (KeyResult, error) {
	if err := CheckActor(cmd.Actor); err != nil {
		return KeyResult{}, err
	}
	if cmd.Name == nil && cmd.Metadata == nil {
		return KeyResult{}, Errorf(EInvalid, "nothing to update: give name and/or metadata")
	}
	if cmd.Name != nil {
		if err := CheckName(*cmd.Name); err != nil {
			return KeyResult{}, err
		}
	}
	if err := CheckMetadata(cmd.Metadata); err != nil {
		return KeyResult{}, err
	}
	cmdID, err := s.commandID(cmd.CommandID)
	if err != nil {
		return KeyResult{}, err
	}
	k, changes, seq, err := s.mutate(ctx, org, cmd.KeyID, cmdID, cmd.CommandID != "", EventKeyUpdated, actorOr(cmd.Actor), true, func(k KeyState, now time.Time) ([]change, error) {
		if err := k.checkMutable(now, "updated"); err != nil {
			return nil, err
		}
		n := k.clone()
		d := KeyUpdatedData{}
		if cmd.Name != nil && *cmd.Name != k.Name {
			n.Name = *cmd.Name
			d.Name = cmd.Name
		}
		if cmd.Metadata != nil && !mapsEqual(cmd.Metadata, k.Metadata) {
			n.Metadata = cmd.Metadata
			d.Metadata = cmd.Metadata
		}
		if d.Name == nil && d.Metadata == nil {
			return nil, nil
		}
		n.Version = k.Version + 1
		d.Key = n
		return []change{{typ: EventKeyUpdated, state: n, data: d}}, nil
	})
	return s.keyResult(k, changes, seq, err)
}

// RotateKey creates a new key with the old key's name, permissions and
// metadata, and makes the old key expire after the grace period (0: now; it
// never extends an earlier expiry). Both events are appended atomically.
func (s *Service) RotateKey(ctx context.Context, org string, cmd RotateKey) (RotateKeyResult, error) {
	if err := CheckActor(cmd.Actor); err != nil {
		return RotateKeyResult{}, err
	}
	if cmd.GracePeriodSeconds == nil {
		return RotateKeyResult{}, Errorf(EInvalid, "grace_period_seconds is required (0 ends the old key now)")
	}
	grace := time.Duration(*cmd.GracePeriodSeconds) * time.Second
	if *cmd.GracePeriodSeconds < 0 || *cmd.GracePeriodSeconds > int64(MaxGracePeriod/time.Second) {
		return RotateKeyResult{}, Errorf(EInvalid, "grace_period_seconds must be between 0 and %d (30 days)", int64(MaxGracePeriod/time.Second))
	}
	cmdID, err := s.commandID(cmd.CommandID)
	if err != nil {
		return RotateKeyResult{}, err
	}
	prefix := s.Prefix
	if prefix == "" {
		prefix = DefaultPrefix
	}
	secret, err := NewSecret(prefix, s.Rand)
	if err != nil {
		return RotateKeyResult{}, err
	}
	ulid, err := s.newID()
	if err != nil {
		return RotateKeyResult{}, err
	}
	newID := KeyIDPrefix + ulid
	old, changes, seq, err := s.mutate(ctx, org, cmd.KeyID, cmdID, cmd.CommandID != "", EventKeyRotated, actorOr(cmd.Actor), true, func(k KeyState, now time.Time) ([]change, error) {
		if err := k.checkMutable(now, "rotated"); err != nil {
			return nil, err
		}
		nk := s.newKeyState(org, newID, k.Name, secret, slices.Clone(k.Permissions), maps.Clone(k.Metadata), nil, now)
		nk.RotatedFrom = k.ID
		o := k.clone()
		exp := now.Add(grace)
		if k.ExpiresAt != nil && k.ExpiresAt.Before(exp) {
			exp = *k.ExpiresAt
		}
		o.ExpiresAt, o.RotatedTo, o.Version = &exp, newID, k.Version+1
		return []change{
			{typ: EventKeyCreated, state: nk, isNew: true, data: KeyCreatedData{Key: nk, RotatedFrom: k.ID}},
			{typ: EventKeyRotated, state: o, data: KeyRotatedData{NewKeyID: newID, GracePeriodSeconds: *cmd.GracePeriodSeconds, ExpiresAt: exp, Key: o}},
		}, nil
	})
	if err != nil {
		return RotateKeyResult{}, err
	}
	now := s.now()
	if changes == nil {
		// This command landed before (a lost reply): read both keys back.
		// When the client resent it, the secret of that first rotation was
		// only in the lost reply: the answer then has none.
		if old.RotatedTo == "" {
			return RotateKeyResult{}, Errorf(EConflict, "key %s was changed concurrently; retry", cmd.KeyID)
		}
		nk, _, err := s.LoadKey(ctx, org, old.RotatedTo)
		if err != nil {
			return RotateKeyResult{}, err
		}
		if old.RotatedTo != newID {
			secret = ""
		}
		return RotateKeyResult{Key: nk.View(now, nil), Secret: secret, Previous: old.View(now, nil), Sequence: seq}, nil
	}
	return RotateKeyResult{Key: changes[0].state.View(now, nil), Secret: secret, Previous: changes[1].state.View(now, nil), Sequence: seq}, nil
}

// keyResult shapes the reply of a single-event key command.
func (s *Service) keyResult(k KeyState, changes []change, seq uint64, err error) (KeyResult, error) {
	if err != nil {
		return KeyResult{}, err
	}
	if len(changes) > 0 {
		k = changes[len(changes)-1].state
	}
	return KeyResult{Key: k.View(s.now(), nil), Sequence: seq}, nil
}

// catalogChange loads the catalog, decides, and appends the catalog event,
// retrying on conflict.
func (s *Service) catalogChange(ctx context.Context, typ, cmdID string, actor Actor,
	decide func(c Catalog) (Permission, Catalog, bool, error)) (PermissionResult, error) {
	for attempt := 1; ; attempt++ {
		rec, ok, err := s.Store.Last(ctx, CatalogSubject)
		if err != nil {
			return PermissionResult{}, storeError(err)
		}
		c := NewCatalog(nil)
		var seq uint64
		if ok {
			ev, err := DecodeEvent(rec.Data)
			if err != nil {
				return PermissionResult{}, err
			}
			if c, err = ev.Catalog(); err != nil {
				return PermissionResult{}, err
			}
			seq = rec.Sequence
			if attempt > 1 && ev.CommandID == cmdID {
				var d PermissionEventData
				_ = json.Unmarshal(ev.Data, &d)
				return PermissionResult{Permission: d.Permission, Sequence: seq}, nil
			}
		}
		p, next, changed, err := decide(c)
		if err != nil {
			return PermissionResult{}, err
		}
		if !changed {
			return PermissionResult{Permission: p, Sequence: seq}, nil
		}
		_, data, err := s.event(typ, "", "", s.now(), actor, cmdID, PermissionEventData{Permission: p, Catalog: next.List()})
		if err != nil {
			return PermissionResult{}, err
		}
		newSeq, err := s.Store.Append(ctx, Append{Subject: CatalogSubject, ExpectedSequence: seq, MsgID: cmdID + ":catalog", Type: typ, Data: data})
		if err == nil {
			return PermissionResult{Permission: p, Sequence: newSeq}, nil
		}
		if !errors.Is(err, ErrConflict) {
			return PermissionResult{}, storeError(err)
		}
		if attempt >= s.attempts() {
			return PermissionResult{}, Errorf(EConflict, "the permission catalog is being changed by other writers; retry")
		}
	}
}

// DefinePermission adds a permission to the catalog or changes its
// description. Defining it again with the same description appends nothing.
func (s *Service) DefinePermission(ctx context.Context, cmd DefinePermission) (PermissionResult, error) {
	if err := CheckActor(cmd.Actor); err != nil {
		return PermissionResult{}, err
	}
	cmdID, err := s.commandID(cmd.CommandID)
	if err != nil {
		return PermissionResult{}, err
	}
	return s.catalogChange(ctx, EventPermissionDefined, cmdID, actorOr(cmd.Actor), func(c Catalog) (Permission, Catalog, bool, error) {
		return c.Define(cmd.Slug, cmd.Description)
	})
}

// RetirePermission retires a permission. Retiring a retired permission
// appends nothing.
func (s *Service) RetirePermission(ctx context.Context, cmd RetirePermission) (PermissionResult, error) {
	if err := CheckActor(cmd.Actor); err != nil {
		return PermissionResult{}, err
	}
	cmdID, err := s.commandID(cmd.CommandID)
	if err != nil {
		return PermissionResult{}, err
	}
	return s.catalogChange(ctx, EventPermissionRetired, cmdID, actorOr(cmd.Actor), func(c Catalog) (Permission, Catalog, bool, error) {
		return c.Retire(cmd.Slug)
	})
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
