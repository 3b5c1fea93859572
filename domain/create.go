package domain

import (
	"context"
	"errors"
	"time"
)

// CreateKey creates a key and returns it with its secret, which exists
// nowhere else. With an idempotency key already used by this organization in
// the last 24 hours it returns the first key, without a secret, and appends
// nothing.
//
// An idempotency key (or a client-given command id, which counts as one)
// costs one reservation in the idempotency store; a create without either
// makes no such round trip. A resend that finds the reservation of a create
// whose key never appeared (its process crashed, or it is still under way)
// does not wait for it: it creates the key itself, under the key id the
// reservation names (takeOver), so the first create and the resend race for
// that one key subject and the stream's guard (the subject must be empty)
// lets exactly one of them land; the other answers with that key.
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
	var r reservation
	if idem != "" {
		var res CreateKeyResult
		var done bool
		if r, res, done, err = s.reserve(ctx, org, idem, keyID, now); done || err != nil {
			if err == nil {
				err = hiddenFromScope(cmd.Scope, res)
			}
			if err != nil {
				return CreateKeyResult{}, err
			}
			return res, err
		}
		keyID = r.rec.KeyID
	}
	// The rules that depend on time and on the catalog come after the
	// idempotency lookup: a repeated create gets the first key even when its
	// expires_at has passed or a permission was retired since.
	res, attempted, err := s.createChecked(ctx, org, keyID, c, cmd, perms, r, now)
	if err == nil {
		// Another attempt of the same idempotency key may have landed first.
		if err = hiddenFromScope(cmd.Scope, res); err != nil {
			return CreateKeyResult{}, err
		}
	}
	if err != nil && idem != "" && !r.takeOver && !(attempted && maybeAppended(err)) {
		// Nothing was stored: the idempotency key is free again, unless a
		// resend has taken the reservation over meanwhile (Release is by
		// revision).
		_ = s.Idempotency.Release(context.WithoutCancel(ctx), org, idem, r.rec)
	}
	return res, err
}

// reservation is a create's hold on its idempotency key.
type reservation struct {
	idem string            // the idempotency key ("": none)
	rec  IdempotencyRecord // as this create reserved or took it over
	// takeOver: the record was another create's, whose key had not
	// appeared; this create makes that key (same id) in its place.
	takeOver bool
}

// reserveRounds bounds reserve's attempts against concurrent takers.
const reserveRounds = 3

// reserve takes the idempotency key idem of org for keyID. When an earlier
// create holds it and its key exists, done is true and res is that key
// (without a secret). When its key does not exist (yet), the earlier create
// crashed, or is still under way: reserve takes the record over (a
// compare-and-swap on its revision, so that the earlier create's Release
// can no longer delete it) and returns it with takeOver set; the caller then
// creates the record's key id itself, and the key subject's guard decides
// which of the two lands.
func (s *Service) reserve(ctx context.Context, org, idem, keyID string, now time.Time) (r reservation, res CreateKeyResult, done bool, err error) {
	if s.Idempotency == nil {
		return r, CreateKeyResult{}, true, Errorf(EUnavailable, "idempotency keys are not available on this server")
	}
	for range reserveRounds {
		rec, reserved, err := s.Idempotency.Reserve(ctx, org, idem, keyID, now)
		if err != nil {
			return r, CreateKeyResult{}, true, storeError(err)
		}
		if reserved {
			return reservation{idem: idem, rec: rec}, CreateKeyResult{}, false, nil
		}
		first, found, err := load(ctx, s.Store, keyAggregate(org, rec.KeyID))
		if err != nil {
			return r, CreateKeyResult{}, true, err
		}
		if found {
			return r, CreateKeyResult{Key: first.state.View(now, nil), Sequence: first.seq}, true, nil
		}
		replaced, err := s.Idempotency.Replace(ctx, org, idem, rec, rec.KeyID, now)
		if err != nil {
			return r, CreateKeyResult{}, true, storeError(err)
		}
		if replaced {
			return reservation{idem: idem, rec: rec, takeOver: true}, CreateKeyResult{}, false, nil
		}
		// Changed meanwhile (released, or taken over by another resend):
		// look again.
	}
	return r, CreateKeyResult{}, true, Errorf(EConflict, "a create with this idempotency_key is in progress; retry in a moment")
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

// createChecked checks expires_at and the catalog, then appends the key
// under the reservation r (none: r.idem empty); attempted tells whether the
// append was tried.
func (s *Service) createChecked(ctx context.Context, org, keyID string, c command, cmd CreateKey, perms []string, r reservation, now time.Time) (_ CreateKeyResult, attempted bool, _ error) {
	var expires *time.Time
	if cmd.ExpiresAt != nil {
		t := cmd.ExpiresAt.UTC().Truncate(time.Millisecond)
		if !t.After(now) {
			return CreateKeyResult{}, false, Errorf(EInvalid, "expires_at %s is not in the future", cmd.ExpiresAt.UTC().Format(time.RFC3339))
		}
		expires = &t
	}
	catalog, err := s.catalogFor(ctx, perms)
	if err != nil {
		return CreateKeyResult{}, false, err
	}
	if err := catalog.CheckGrantable(perms); err != nil {
		return CreateKeyResult{}, false, err
	}
	var roles RoleCatalog
	if len(cmd.Roles) > 0 {
		if roles, _, err = s.Roles(ctx); err != nil {
			return CreateKeyResult{}, false, err
		}
		if err := roles.CheckGrantable(cmd.Roles); err != nil {
			return CreateKeyResult{}, false, err
		}
	}
	o, _, err := s.loadOrg(ctx, org)
	if err != nil {
		return CreateKeyResult{}, false, err
	}
	if expires, err = o.Policy.ExpiresFor(expires, now); err != nil {
		return CreateKeyResult{}, false, err
	}
	if err := o.Policy.CheckGrants(perms, cmd.Roles, roles); err != nil {
		return CreateKeyResult{}, false, err
	}
	secret, err := s.newSecret()
	if err != nil {
		return CreateKeyResult{}, true, err
	}
	k := newKey(org, s.credential(keyID, secret), cmd.Name, perms, cmd.Metadata, expires, now)
	k.Owner, k.Roles, k.Resources = *cmd.Owner, cmd.Roles, cmd.Resources
	d := KeyCreatedData{Key: k, IdempotencyKey: cmd.IdempotencyKey}
	var res CreateKeyResult
	var mine bool
	if o.Policy.MaxActiveKeys != nil {
		res, mine, err = s.appendCountedKey(ctx, c, d, r, now)
	} else {
		res, mine, err = s.appendNewKey(ctx, c, d, r, now)
	}
	if err != nil {
		return CreateKeyResult{}, true, err
	}
	if mine {
		res.Secret = secret
	}
	return res, true, nil
}

// appendNewKey appends the key.created event d on the new key's (empty)
// subject. mine is false when the subject already held the create of the
// same idempotency key (r) by another attempt: res is then that key, whose
// secret this attempt does not know.
func (s *Service) appendNewKey(ctx context.Context, c command, d KeyCreatedData, r reservation, now time.Time) (_ CreateKeyResult, mine bool, _ error) {
	k := d.Key
	data, err := s.event(EventKeyCreated, k.OrgID, k.ID, now, c, 0, d)
	if err != nil {
		return CreateKeyResult{}, false, err
	}
	seq, err := s.Store.Append(ctx, AppendMsg{Subject: KeySubject(k.OrgID, k.ID), MsgID: newKeyMsgID(c, k, r), Type: EventKeyCreated, Data: data})
	if errors.Is(err, ErrConflict) {
		return s.keyTaken(ctx, k, r, now)
	}
	if err != nil {
		return CreateKeyResult{}, false, storeError(err)
	}
	return CreateKeyResult{Key: k.View(now, nil), Sequence: seq}, true, nil
}

// newKeyMsgID is the Msg-Id of the key.created event of k under the
// reservation r.
func newKeyMsgID(c command, k KeyState, r reservation) string {
	msgID := c.id + ":" + k.ID
	if r.takeOver {
		// Not the first attempt's Msg-Id: a duplicate ack for its message
		// must not pass for this one's (it carries another secret's digest).
		msgID += ":" + k.Digest[:16]
	}
	return msgID
}

// keyTaken answers a create of k whose append found k's subject no longer
// empty: our own append, landed before its reply was lost (mine); the other
// attempt of the same idempotent create (a resend that took it over, or the
// first attempt: that key, not mine); or (astronomically unlikely) an id
// collision (conflict).
func (s *Service) keyTaken(ctx context.Context, k KeyState, r reservation, now time.Time) (_ CreateKeyResult, mine bool, _ error) {
	got, found, lerr := load(ctx, s.Store, keyAggregate(k.OrgID, k.ID))
	switch {
	case lerr != nil:
		return CreateKeyResult{}, false, lerr
	case found && got.state.Digest == k.Digest:
		return CreateKeyResult{Key: got.state.View(now, nil), Sequence: got.seq}, true, nil
	case found && r.idem != "":
		return CreateKeyResult{Key: got.state.View(now, nil), Sequence: got.seq}, false, nil
	}
	return CreateKeyResult{}, false, Errorf(EConflict, "key id %s is already taken; retry", k.ID)
}

// appendCountedKey appends the key.created event d together with
// org.keys_counted on its organization's subject, under max_active_keys:
// both in one atomic batch, the organization's guarded by its last
// sequence, so of racing creates for the last slot exactly one lands; the
// others read the organization again and are refused (failed_precondition).
func (s *Service) appendCountedKey(ctx context.Context, c command, d KeyCreatedData, r reservation, now time.Time) (_ CreateKeyResult, mine bool, _ error) {
	k := d.Key
	data, err := s.event(EventKeyCreated, k.OrgID, k.ID, now, c, 0, d)
	if err != nil {
		return CreateKeyResult{}, false, err
	}
	// Racing creates conflict once per create that lands; allow many rounds.
	for attempt := 1; attempt <= 10*s.attempts(); attempt++ {
		o, oseq, err := s.loadOrg(ctx, k.OrgID)
		if err != nil {
			return CreateKeyResult{}, false, err
		}
		if o.Policy.MaxActiveKeys == nil {
			return s.appendNewKey(ctx, c, d, r, now)
		}
		next, err := s.admitKey(ctx, o, k.ID, k.ExpiresAt, "", s.now())
		if err != nil {
			return CreateKeyResult{}, false, err
		}
		odata, err := s.event(EventOrgKeysCounted, k.OrgID, "", now, c, oseq, OrgEventData{Org: next})
		if err != nil {
			return CreateKeyResult{}, false, err
		}
		seq, err := s.Store.Append(ctx,
			AppendMsg{Subject: KeySubject(k.OrgID, k.ID), MsgID: newKeyMsgID(c, k, r), Type: EventKeyCreated, Data: data},
			AppendMsg{Subject: OrgSubject(k.OrgID), ExpectedSequence: oseq, MsgID: c.id + ":org", Type: EventOrgKeysCounted, Data: odata})
		if err == nil {
			return CreateKeyResult{Key: k.View(now, nil), Sequence: seq}, true, nil
		}
		if !errors.Is(err, ErrConflict) {
			return CreateKeyResult{}, false, storeError(err)
		}
		if _, found, lerr := load(ctx, s.Store, keyAggregate(k.OrgID, k.ID)); lerr == nil && found {
			// The key subject is taken (the batch is atomic: the
			// organization's count did not move for this attempt).
			return s.keyTaken(ctx, k, r, now)
		}
	}
	return CreateKeyResult{}, false, Errorf(EConflict, "organization %s is being changed by other writers; retry", k.OrgID)
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

// hiddenFromScope returns conflict when res, the key an idempotency key
// already made, belongs to another member than a user-scope command's sc:
// another member's key is not to be seen, even this way.
func hiddenFromScope(sc Scope, res CreateKeyResult) error {
	if sc.User != "" && (res.Key.Owner.Type != OwnerUser || res.Key.Owner.ID != sc.User) {
		return Errorf(EConflict, "this idempotency_key was already used for another key; use a new one")
	}
	return nil
}
