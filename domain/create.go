package domain

import (
	"context"
	"errors"
	"time"
)

// staleReservation is how old an idempotency reservation whose key never
// appeared must be before another create may take it over (the first create
// crashed between reserving and appending).
const staleReservation = 30 * time.Second

// CreateKey creates a key and returns it with its secret, which exists
// nowhere else. With an idempotency key already used by this organization in
// the last 24 hours it returns the first key, without a secret, and appends
// nothing.
func (s *Service) CreateKey(ctx context.Context, org string, cmd CreateKey) (CreateKeyResult, error) {
	now := s.now()
	if err := CheckOrgID(org); err != nil {
		return CreateKeyResult{}, err
	}
	if err := CheckName(cmd.Name); err != nil {
		return CreateKeyResult{}, err
	}
	if err := CheckMetadata(cmd.Metadata); err != nil {
		return CreateKeyResult{}, err
	}
	c, err := s.begin(cmd.Meta)
	if err != nil {
		return CreateKeyResult{}, err
	}
	perms, err := NormalizePermissions(cmd.Permissions)
	if err != nil {
		return CreateKeyResult{}, err
	}
	if cmd.Owner, err = createOwner(org, cmd.Owner, cmd.Scope); err != nil {
		return CreateKeyResult{}, err
	}
	if cmd.Roles, err = NormalizeRoles(cmd.Roles); err != nil {
		return CreateKeyResult{}, err
	}
	if cmd.Resources, err = NormalizeResources(cmd.Resources); err != nil {
		return CreateKeyResult{}, err
	}
	if len(cmd.IdempotencyKey) > 200 {
		return CreateKeyResult{}, Errorf(EInvalid, "idempotency_key must be at most 200 bytes")
	}
	if err := CheckText("idempotency_key", cmd.IdempotencyKey, false); err != nil {
		return CreateKeyResult{}, err
	}
	keyID, err := s.newKeyID()
	if err != nil {
		return CreateKeyResult{}, err
	}

	// A client-given command id makes a resent create idempotent too, as an
	// idempotency key scoped to command ids.
	idem := cmd.IdempotencyKey
	if idem == "" && c.byClient {
		idem = "keyd-command-id:" + c.id
	}
	if idem != "" {
		if res, done, err := s.reserve(ctx, org, idem, keyID, now); done || err != nil {
			if err == nil && cmd.Scope.User != "" && (res.Key.Owner.Type != OwnerUser || res.Key.Owner.ID != cmd.Scope.User) {
				// Another member's key is not to be seen, even this way.
				return CreateKeyResult{}, Errorf(EConflict, "this idempotency_key was already used for another key; use a new one")
			}
			return res, err
		}
	}
	// The rules that depend on time and on the catalog come after the
	// idempotency lookup: a repeated create gets the first key even when its
	// expires_at has passed or a permission was retired since.
	res, attempted, err := s.createChecked(ctx, org, keyID, c, cmd, perms, now)
	if err != nil && idem != "" && !(attempted && maybeAppended(err)) {
		_ = s.Idempotency.Release(context.WithoutCancel(ctx), org, idem, keyID)
	}
	return res, err
}

// reserve takes the idempotency key idem of org for keyID. When an earlier
// create holds it, done is true and res is that create's key (without a
// secret), or err says why there is none yet.
func (s *Service) reserve(ctx context.Context, org, idem, keyID string, now time.Time) (res CreateKeyResult, done bool, err error) {
	if s.Idempotency == nil {
		return CreateKeyResult{}, true, Errorf(EUnavailable, "idempotency keys are not available on this server")
	}
	rec, reserved, err := s.Idempotency.Reserve(ctx, org, idem, keyID, now)
	if err != nil {
		return CreateKeyResult{}, true, storeError(err)
	}
	if reserved {
		return CreateKeyResult{}, false, nil
	}
	first, found, err := load(ctx, s.Store, keyAggregate(org, rec.KeyID))
	if err != nil {
		return CreateKeyResult{}, true, err
	}
	if found {
		return CreateKeyResult{Key: first.state.View(now, nil), Sequence: first.seq}, true, nil
	}
	if now.Sub(rec.At) < staleReservation {
		return CreateKeyResult{}, true, Errorf(EConflict, "a create with this idempotency_key is still in progress; retry in a moment")
	}
	replaced, err := s.Idempotency.Replace(ctx, org, idem, rec, keyID, now)
	if err != nil {
		return CreateKeyResult{}, true, storeError(err)
	}
	if !replaced {
		return CreateKeyResult{}, true, Errorf(EConflict, "a create with this idempotency_key is in progress; retry in a moment")
	}
	return CreateKeyResult{}, false, nil
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
func (s *Service) createChecked(ctx context.Context, org, keyID string, c command, cmd CreateKey, perms []string, now time.Time) (_ CreateKeyResult, attempted bool, _ error) {
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
	if len(cmd.Roles) > 0 {
		roles, _, err := s.Roles(ctx)
		if err != nil {
			return CreateKeyResult{}, false, err
		}
		if err := roles.CheckGrantable(cmd.Roles); err != nil {
			return CreateKeyResult{}, false, err
		}
	}
	secret, err := s.newSecret()
	if err != nil {
		return CreateKeyResult{}, true, err
	}
	k := newKey(org, s.credential(keyID, secret), cmd.Name, perms, cmd.Metadata, expires, now)
	k.Owner, k.Roles, k.Resources = *cmd.Owner, cmd.Roles, cmd.Resources
	res, err := s.appendNewKey(ctx, c, KeyCreatedData{Key: k, IdempotencyKey: cmd.IdempotencyKey}, now)
	if err != nil {
		return CreateKeyResult{}, true, err
	}
	res.Secret = secret
	return res, true, nil
}

// appendNewKey appends the key.created event d on the new key's (empty)
// subject.
func (s *Service) appendNewKey(ctx context.Context, c command, d KeyCreatedData, now time.Time) (CreateKeyResult, error) {
	k := d.Key
	data, err := s.event(EventKeyCreated, k.OrgID, k.ID, now, c, d)
	if err != nil {
		return CreateKeyResult{}, err
	}
	seq, err := s.Store.Append(ctx, AppendMsg{Subject: KeySubject(k.OrgID, k.ID), MsgID: c.id + ":" + k.ID, Type: EventKeyCreated, Data: data})
	if errors.Is(err, ErrConflict) {
		// The subject already holds an event: our own append, landed before
		// its reply was lost, or (astronomically unlikely) an id collision.
		got, found, lerr := load(ctx, s.Store, keyAggregate(k.OrgID, k.ID))
		if lerr == nil && found && got.event.CommandID == c.id && got.state.Version == 1 {
			return CreateKeyResult{Key: got.state.View(now, nil), Sequence: got.seq}, nil
		}
		return CreateKeyResult{}, Errorf(EConflict, "key id %s is already taken; retry", k.ID)
	}
	if err != nil {
		return CreateKeyResult{}, storeError(err)
	}
	return CreateKeyResult{Key: k.View(now, nil), Sequence: seq}, nil
}

// createOwner is the owner of a key created in org by a command of scope
// sc that asked for o (nil: none). Errors: invalid_argument for an owner
// that is not one (CheckOwner), permission_denied for one sc may not create.
func createOwner(org string, o *Owner, sc Scope) (*Owner, error) {
	own, err := CheckOwner(org, o)
	if err != nil {
		return nil, err
	}
	own, err = sc.ownerForCreate(org, own, o != nil)
	if err != nil {
		return nil, err
	}
	return &own, nil
}
