package domain

import (
	"bytes"
	"context"
	"encoding/hex"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oklog/ulid/v2"
)

// Service runs commands: each use case checks its arguments, then lets the
// write engine (write.go) load the aggregate (one read of the last event on
// its subject, which carries its full state), decide by the aggregate's rules
// (KeyState's and Catalog's methods), append the events with optimistic
// concurrency on the subject, and retry a bounded number of times on
// conflict where the command allows it. CreateKey, with its idempotency
// keys, is in create.go.
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
	// Catalogs, when set, is a watched copy of the permission catalog
	// (eventstore.CatalogWatcher) that create and set_permissions check
	// grants against instead of reading the catalog from the store (see
	// catalogFor for what that guarantees). Nil: every check reads it.
	Catalogs CatalogSource

	// catalog is the last catalog Catalog decoded, with the event it came
	// from: reused while the last catalog event is byte for byte the same.
	catalog atomic.Pointer[decodedCatalog]

	idMu sync.Mutex
	ids  *ulid.MonotonicEntropy

	// OrgKeys lists an organization's keys for set_policy's first count
	// under max_active_keys (policy.go); nil counts none.
	OrgKeys OrgKeys
	// Keys finds a user's keys for RevokeUserKeys (nil: that command is
	// unavailable).
	Keys KeyDirectory
	// roles is the last role catalog Roles decoded (as catalog).
	roles atomic.Pointer[decodedRoles]
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

var defaultActor = Actor{Type: "system", ID: "keyd"}

func (s *Service) now() time.Time { return s.Now().UTC().Truncate(time.Millisecond) }

func (s *Service) attempts() int {
	if s.MaxAttempts > 0 {
		return s.MaxAttempts
	}
	return 5
}

// command is who runs a command and under which id.
type command struct {
	id       string
	actor    Actor
	byClient bool // the client chose id (Keyd-Command-Id)
}

// begin checks what every command carries and returns its id (the client's,
// or a new one) and its actor (the system actor keyd when none is named).
func (s *Service) begin(m Meta) (command, error) {
	if err := CheckActor(m.Actor); err != nil {
		return command{}, err
	}
	c := command{id: m.CommandID, actor: defaultActor, byClient: m.CommandID != ""}
	if m.Actor != nil {
		c.actor = *m.Actor
	}
	if c.byClient {
		if len(c.id) > 128 {
			return command{}, Errorf(EInvalid, "command id must be at most 128 bytes")
		}
		return c, CheckText("command id (Keyd-Command-Id)", c.id, false)
	}
	var err error
	c.id, err = s.newID()
	return c, err
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

func (s *Service) newKeyID() (string, error) {
	id, err := s.newID()
	return KeyIDPrefix + id, err
}

// newSecret returns a new secret with the Service's prefix.
func (s *Service) newSecret() (string, error) {
	prefix := s.Prefix
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return NewSecret(prefix, s.Rand)
}

// credential is what key keyID with secret is known by.
func (s *Service) credential(keyID, secret string) Credential {
	d := s.Digester.Digest(secret)
	return Credential{KeyID: keyID, Mask: Mask(secret), Digest: hex.EncodeToString(d[:])}
}

// LoadKey returns the current state of a key and the sequence of its last
// event. Errors: invalid_argument for malformed ids, not_found.
func (s *Service) LoadKey(ctx context.Context, org, keyID string) (KeyState, uint64, error) {
	if err := checkKeyRef(org, keyID); err != nil {
		return KeyState{}, 0, err
	}
	l, found, err := load(ctx, s.Store, keyAggregate(org, keyID))
	if err != nil {
		return KeyState{}, 0, err
	}
	if !found {
		return KeyState{}, 0, keyNotFound(org, keyID)
	}
	return l.state, l.seq, nil
}

func checkKeyRef(org, keyID string) error {
	if err := CheckOrgID(org); err != nil {
		return err
	}
	return CheckKeyID(keyID)
}

// CatalogSource is a copy of the permission catalog that a watcher of the
// catalog subject keeps current in memory (eventstore.CatalogWatcher).
type CatalogSource interface {
	// Current returns the catalog and the sequence of its last event.
	// ok is false when the copy is not known to be current (not loaded
	// yet, or out of contact with the stream for longer than its bound):
	// the caller then reads the store.
	Current() (c Catalog, seq uint64, ok bool)
	// Observe offers the catalog as it stands after sequence seq (read
	// from the store, or appended by this process); the copy takes it if
	// it is newer than what it holds.
	Observe(c Catalog, seq uint64)
}

// Catalog returns the current permission catalog and the sequence of its
// last event (0 when empty), read from the store.
func (s *Service) Catalog(ctx context.Context) (Catalog, uint64, error) {
	rec, ok, err := s.Store.Last(ctx, CatalogSubject)
	if err != nil {
		return Catalog{}, 0, storeError(err)
	}
	if !ok {
		return NewCatalog(nil), 0, nil
	}
	// Decoding the catalog again is most of what a read costs once it is
	// read, and it rarely changes.
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
		if s.Catalogs != nil {
			s.Catalogs.Observe(c, rec.Sequence)
		}
	}
	return c, rec.Sequence, err
}

// catalogFor returns the catalog to check a grant of perms against. With a
// watched copy (Catalogs) that is current and lets every one of perms be
// granted, that copy: no read of the store. Otherwise the catalog read from
// the store, so a refusal ("not defined", "retired") always rests on a read
// of the stream, and a permission defined a moment ago through any process
// can be granted at once.
//
// The guarantee of the watched copy: a define or retire answered by this
// process is in its copy before the reply (catalogCommand observes it); one
// answered by another process reaches it within the watcher's propagation
// (milliseconds; at most its poll interval when its consumer stalls), and a
// copy out of contact with the stream for longer than its bound is not used.
// So a create that races a retire answered elsewhere can still be granted
// the permission during that window, as a create whose catalog read came
// just before the retire always could; verifiers never report a retired
// permission either way.
func (s *Service) catalogFor(ctx context.Context, perms []string) (Catalog, error) {
	if s.Catalogs != nil {
		if c, _, ok := s.Catalogs.Current(); ok && c.CheckGrantable(perms) == nil {
			return c, nil
		}
	}
	c, _, err := s.Catalog(ctx)
	return c, err
}

// keyCommand runs a command on one key that appends at most one event,
// decided by rule, and replies with the key as the command left it.
func (s *Service) keyCommand(ctx context.Context, org, keyID string, w write[KeyState],
	rule func(k KeyState, now time.Time) (keyEventData, bool, error)) (KeyResult, error) {
	if err := checkKeyRef(org, keyID); err != nil {
		return KeyResult{}, err
	}
	w.aggregate = keyAggregate(org, keyID)
	out, err := mutate(ctx, s, w, func(k KeyState, now time.Time) ([]change[KeyState], error) {
		d, changed, err := rule(k, now)
		if err != nil || !changed {
			return nil, err
		}
		return []change[KeyState]{keyChange(w.evType, d)}, nil
	})
	if err != nil {
		return KeyResult{}, err
	}
	return KeyResult{Key: out.state.View(s.now(), nil), Sequence: out.seq}, nil
}

// RevokeKey revokes a key. Revoking a revoked key replies with the key as it
// is and appends nothing. The reason is at most 500 bytes of text
// (CheckText; tab and line feed allowed).
func (s *Service) RevokeKey(ctx context.Context, org string, cmd RevokeKey) (KeyResult, error) {
	c, err := s.begin(cmd.Meta)
	if err != nil {
		return KeyResult{}, err
	}
	if len(cmd.Reason) > MaxReasonLength {
		return KeyResult{}, Errorf(EInvalid, "reason must be at most %d bytes", MaxReasonLength)
	}
	if err := CheckText("reason", cmd.Reason, true); err != nil {
		return KeyResult{}, err
	}
	w := write[KeyState]{cmd: c, evType: EventKeyRevoked, retry: true}
	return s.keyCommand(ctx, org, cmd.KeyID, w, func(k KeyState, now time.Time) (keyEventData, bool, error) {
		if err := cmd.Scope.checkKey(k, false); err != nil {
			return nil, false, err
		}
		d, changed := k.Revoke(cmd.Reason, now)
		return d, changed, nil
	})
}

// SetPermissions replaces a key's permissions, roles and/or resources
// (each given field; at least one). Every permission and role must be
// defined and active. With ExpectedVersion the command applies only to that
// version (conflict otherwise) and is not retried.
func (s *Service) SetPermissions(ctx context.Context, org string, cmd SetPermissions) (KeyResult, error) {
	c, err := s.begin(cmd.Meta)
	if err != nil {
		return KeyResult{}, err
	}
	if cmd.Permissions == nil && cmd.Roles == nil && cmd.Resources == nil {
		return KeyResult{}, Errorf(EInvalid, "give permissions, roles and/or resources (arrays; [] removes all)")
	}
	var g Grants
	if cmd.Permissions != nil {
		if g.Permissions, err = NormalizePermissions(cmd.Permissions); err != nil {
			return KeyResult{}, err
		}
	}
	if cmd.Roles != nil {
		if g.Roles, err = NormalizeRoles(cmd.Roles); err != nil {
			return KeyResult{}, err
		}
	}
	if cmd.Resources != nil {
		if g.Resources, err = NormalizeResources(cmd.Resources); err != nil {
			return KeyResult{}, err
		}
	}
	w := write[KeyState]{cmd: c, evType: EventKeyPermissionsChanged, retry: cmd.ExpectedVersion == nil}
	return s.keyCommand(ctx, org, cmd.KeyID, w, func(k KeyState, now time.Time) (keyEventData, bool, error) {
		// Looked up on every attempt: a retire that landed meanwhile counts.
		catalog, err := s.catalogFor(ctx, g.Permissions)
		if err != nil {
			return nil, false, err
		}
		if err := cmd.Scope.checkKey(k, true); err != nil {
			return nil, false, err
		}
		o, _, err := s.loadOrg(ctx, org)
		if err != nil {
			return nil, false, err
		}
		// The policy holds the grant as it will be: what is given replaces,
		// the rest stays (a call that gives only resources narrows the key
		// and is not refused for what it already held).
		granted, grantedRoles := k.Permissions, k.Roles
		if g.Permissions != nil {
			granted = g.Permissions
		}
		if g.Roles != nil {
			grantedRoles = g.Roles
		}
		var roles RoleCatalog
		if len(g.Roles) > 0 || (o.Policy.AllowedPermissions != nil && len(grantedRoles) > 0) {
			if roles, _, err = s.Roles(ctx); err != nil {
				return nil, false, err
			}
		}
		if g.Permissions != nil || g.Roles != nil {
			if err := o.Policy.CheckGrants(granted, grantedRoles, roles); err != nil {
				return nil, false, err
			}
		}
		return k.SetGrants(g, catalog, roles, cmd.Scope, cmd.ExpectedVersion, now)
	})
}

// UpdateKey renames a key and/or replaces its metadata.
func (s *Service) UpdateKey(ctx context.Context, org string, cmd UpdateKey) (KeyResult, error) {
	c, err := s.begin(cmd.Meta)
	if err != nil {
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
	w := write[KeyState]{cmd: c, evType: EventKeyUpdated, retry: true}
	return s.keyCommand(ctx, org, cmd.KeyID, w, func(k KeyState, now time.Time) (keyEventData, bool, error) {
		if err := cmd.Scope.checkKey(k, true); err != nil {
			return nil, false, err
		}
		return k.Update(cmd.Name, cmd.Metadata, now)
	})
}

// RotateKey creates a new key with the old key's name, permissions and
// metadata, and makes the old key expire after the grace period (0: now; it
// never extends an earlier expiry). Both events are appended atomically.
func (s *Service) RotateKey(ctx context.Context, org string, cmd RotateKey) (RotateKeyResult, error) {
	c, err := s.begin(cmd.Meta)
	if err != nil {
		return RotateKeyResult{}, err
	}
	if cmd.GracePeriodSeconds == nil {
		return RotateKeyResult{}, Errorf(EInvalid, "grace_period_seconds is required (0 ends the old key now)")
	}
	if *cmd.GracePeriodSeconds < 0 || *cmd.GracePeriodSeconds > int64(MaxGracePeriod/time.Second) {
		return RotateKeyResult{}, Errorf(EInvalid, "grace_period_seconds must be between 0 and %d (30 days)", int64(MaxGracePeriod/time.Second))
	}
	grace := time.Duration(*cmd.GracePeriodSeconds) * time.Second
	secret, err := s.newSecret()
	if err != nil {
		return RotateKeyResult{}, err
	}
	newID, err := s.newKeyID()
	if err != nil {
		return RotateKeyResult{}, err
	}
	if err := checkKeyRef(org, cmd.KeyID); err != nil {
		return RotateKeyResult{}, err
	}
	next := s.credential(newID, secret)
	w := write[KeyState]{aggregate: keyAggregate(org, cmd.KeyID), cmd: c, evType: EventKeyRotated, retry: true}
	out, err := mutate(ctx, s, w, func(k KeyState, now time.Time) ([]change[KeyState], error) {
		if err := cmd.Scope.checkKey(k, true); err != nil {
			return nil, err
		}
		o, oseq, err := s.loadOrg(ctx, org)
		if err != nil {
			return nil, err
		}
		var roles RoleCatalog
		if o.Policy.AllowedPermissions != nil && len(k.Roles) > 0 {
			if roles, _, err = s.Roles(ctx); err != nil {
				return nil, err
			}
		}
		created, rotated, err := k.Rotate(next, grace, o.Policy, roles, now)
		if err != nil {
			return nil, err
		}
		nk := keyChange(EventKeyCreated, created)
		nk.startsSubject = true
		changes := []change[KeyState]{nk, keyChange(EventKeyRotated, rotated)}
		if o.Policy.MaxActiveKeys != nil {
			// The new key takes the old key's place in the count.
			no, err := s.admitKey(ctx, o, created.Key.ID, created.Key.ExpiresAt, k.ID, now)
			if err != nil {
				return nil, err
			}
			changes = append(changes, orgChange[KeyState](no, oseq))
		}
		return changes, nil
	})
	if err != nil {
		return RotateKeyResult{}, err
	}
	now := s.now()
	if out.changes == nil {
		// This command landed before (a lost reply): read both keys back.
		// When the client resent it, the secret of that first rotation was
		// only in the lost reply: the answer then has none.
		old := out.state
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
		return RotateKeyResult{Key: nk.View(now, nil), Secret: secret, Previous: old.View(now, nil), Sequence: out.seq}, nil
	}
	return RotateKeyResult{Key: out.changes[0].after.View(now, nil), Secret: secret, Previous: out.state.View(now, nil), Sequence: out.seq}, nil
}

// catalogCommand runs a command on the permission catalog, decided by rule,
// and replies with slug's permission as the command left it.
func (s *Service) catalogCommand(ctx context.Context, c command, evType, slug string,
	rule func(c Catalog) (p Permission, next Catalog, changed bool, err error)) (PermissionResult, error) {
	// Defining or retiring again changes nothing, so a resent catalog
	// command is decided anew rather than looked for (its id is still
	// recognized on a retry after a conflict).
	c.byClient = false
	w := write[Catalog]{aggregate: catalogAggregate, cmd: c, evType: evType, retry: true}
	out, err := mutate(ctx, s, w, func(cat Catalog, _ time.Time) ([]change[Catalog], error) {
		p, next, changed, err := rule(cat)
		if err != nil || !changed {
			return nil, err
		}
		return []change[Catalog]{{typ: evType, data: PermissionEventData{Permission: p, Catalog: next.List(), Version: next.Version()}, after: next}}, nil
	})
	if err != nil {
		return PermissionResult{}, err
	}
	if s.Catalogs != nil && out.seq > 0 {
		// Before the reply: every command this process answers after it
		// checks against this catalog (as of out.seq) or a later one.
		s.Catalogs.Observe(out.state, out.seq)
	}
	return PermissionResult{Permission: out.state.bySlug[slug], Sequence: out.seq}, nil
}

// DefinePermission adds a permission to the catalog or changes its
// description. Defining it again with the same description appends nothing.
func (s *Service) DefinePermission(ctx context.Context, cmd DefinePermission) (PermissionResult, error) {
	c, err := s.begin(cmd.Meta)
	if err != nil {
		return PermissionResult{}, err
	}
	return s.catalogCommand(ctx, c, EventPermissionDefined, cmd.Slug, func(cat Catalog) (Permission, Catalog, bool, error) {
		return cat.Define(cmd.Slug, cmd.Description)
	})
}

// RetirePermission retires a permission. Retiring a retired permission
// appends nothing.
func (s *Service) RetirePermission(ctx context.Context, cmd RetirePermission) (PermissionResult, error) {
	c, err := s.begin(cmd.Meta)
	if err != nil {
		return PermissionResult{}, err
	}
	return s.catalogCommand(ctx, c, EventPermissionRetired, cmd.Slug, func(cat Catalog) (Permission, Catalog, bool, error) {
		return cat.Retire(cmd.Slug)
	})
}
