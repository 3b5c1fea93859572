package postgres

import (
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/migrations"
)

// Limits of the list methods.
const (
	DefaultKeyLimit   = 50
	MaxKeyLimit       = 100
	DefaultEventLimit = 100
	MaxEventLimit     = 1000
)

// Polling of WaitForSequence.
const (
	waitPollStart = 2 * time.Millisecond
	waitPollMax   = 25 * time.Millisecond
)

// ReadModel reads the read models the projector keeps in PostgreSQL
// (migrations/0001_read_models.sql); verifiers write the keys' last use
// (verifier.WriteLastUsed). It is safe for concurrent use.
type ReadModel struct {
	pool *pgxpool.Pool
	now  func() time.Time
}

// NewReadModel returns a ReadModel over pool. now is the clock a key's
// expiry is judged by (nil: time.Now).
func NewReadModel(pool *pgxpool.Pool, now func() time.Time) *ReadModel {
	if now == nil {
		now = time.Now
	}
	return &ReadModel{pool: pool, now: now}
}

// CheckKeyStatus returns invalid_argument unless status is one a KeyFilter
// takes.
func CheckKeyStatus(status string) error {
	switch status {
	case "", "all", domain.StatusActive, domain.StatusRevoked, domain.StatusExpired, domain.StatusSuspended:
		return nil
	}
	return domain.Errorf(domain.EInvalid, "status must be one of all, active, suspended, revoked or expired, got %q", status)
}

// CheckKeyLimit returns invalid_argument unless n is a page size of keys,
// 1 to MaxKeyLimit.
func CheckKeyLimit(n int) error { return checkLimit(n, MaxKeyLimit) }

// CheckEventLimit returns invalid_argument unless n is a page size of
// audit events, 1 to MaxEventLimit.
func CheckEventLimit(n int) error { return checkLimit(n, MaxEventLimit) }

func checkLimit(n, max int) error {
	if n < 1 || n > max {
		return domain.Errorf(domain.EInvalid, "limit must be between 1 and %d, got %d", max, n)
	}
	return nil
}

// KeyFilter selects a page of keys.
type KeyFilter struct {
	// Status is "" or "all", "active", "revoked", "expired" or "suspended".
	Status string
	// Limit is the page size, 1 to 100; 0 means 50.
	Limit int
	// Cursor is "" for the first page, else the next cursor of the previous page.
	Cursor string
	// OwnerType is "", "organization" or "user"; OwnerID (a user id)
	// selects one user's keys (and implies OwnerType "user").
	OwnerType string
	OwnerID   string
	// Q selects keys whose name holds it (case-insensitive), or whose
	// mask ends with it when it is 4 characters.
	Q string
	// Permission selects keys whose effective permissions include it.
	Permission string
	// ExpiresBefore selects keys that expire before it.
	ExpiresBefore *time.Time
}

// keyColumns are the columns keyRow scans, in its field order.
const keyColumns = `key_id, org_id, name, owner_type, owner_id, mask, permissions, status,
	created_at, expires_at, revoked_at, last_used_at, metadata, version, roles, resources`

type keyRow struct {
	KeyID       string
	OrgID       string
	Name        string
	OwnerType   string
	OwnerID     string
	Mask        string
	Permissions []string
	Status      string
	CreatedAt   time.Time
	ExpiresAt   *time.Time
	RevokedAt   *time.Time
	LastUsedAt  *time.Time
	Metadata    map[string]string
	Version     int64
	Roles       []string
	Resources   []string
}

func (r keyRow) view(now time.Time) domain.KeyView {
	k := domain.KeyState{
		ID: r.KeyID, OrgID: r.OrgID, Name: r.Name,
		Owner: domain.Owner{Type: r.OwnerType, ID: r.OwnerID},
		Mask:  r.Mask, Permissions: r.Permissions, Status: r.Status,
		CreatedAt: r.CreatedAt.UTC(), ExpiresAt: utc(r.ExpiresAt), RevokedAt: utc(r.RevokedAt),
		Metadata: r.Metadata, Version: r.Version, Roles: r.Roles, Resources: r.Resources,
	}
	return k.View(now, utc(r.LastUsedAt))
}

func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

// ListKeys returns a page of the organization's keys, newest first, and the
// cursor of the next page ("" when this is the last one). Paging is by key id
// (keyset), so keys created while a client pages neither shift nor repeat
// the pages after the first; they appear on a new first page.
//
// A key's status is judged at the ReadModel's clock: an active key whose
// expires_at is at or before now is "expired".
//
// Errors: invalid_argument for an unknown status (CheckKeyStatus), a limit
// outside 1..100 (CheckKeyLimit) or a cursor that ListKeys did not return;
// other errors are database failures.
func (r *ReadModel) ListKeys(ctx context.Context, org string, f KeyFilter) (keys []domain.KeyView, next string, err error) {
	limit := cmp.Or(f.Limit, DefaultKeyLimit)
	if err := CheckKeyLimit(limit); err != nil {
		return nil, "", err
	}
	if err := CheckKeyStatus(f.Status); err != nil {
		return nil, "", err
	}
	now := r.now()
	q, args, err := listQuery(org, f, limit, now)
	if err != nil {
		return nil, "", err
	}
	rows, err := r.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, "", classify(fmt.Errorf("list keys of organization %s: %w", org, err))
	}
	found, err := pgx.CollectRows(rows, pgx.RowToStructByPos[keyRow])
	if err != nil {
		return nil, "", classify(fmt.Errorf("list keys of organization %s: %w", org, err))
	}
	if len(found) > limit {
		found = found[:limit]
		next = encodeCursor(found[limit-1].KeyID)
	}
	keys = make([]domain.KeyView, len(found))
	for i, row := range found {
		keys[i] = row.view(now)
	}
	return keys, next, nil
}

func encodeCursor(keyID string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(keyID))
}

func decodeCursor(c string) (keyID string, ok bool) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || !domain.ValidKeyID(string(b)) {
		return "", false
	}
	return string(b), true
}

// GetKey returns one key of the organization, its status judged at the
// ReadModel's clock.
//
// Errors: not_found when the organization has no key with that id (a key of
// another organization included); other errors are database failures.
func (r *ReadModel) GetKey(ctx context.Context, org, keyID string) (domain.KeyView, error) {
	rows, err := r.pool.Query(ctx, "SELECT "+keyColumns+" FROM keys WHERE org_id = $1 AND key_id = $2", org, keyID)
	if err != nil {
		return domain.KeyView{}, classify(fmt.Errorf("get key %s: %w", keyID, err))
	}
	row, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[keyRow])
	if errors.Is(err, pgx.ErrNoRows) {
		return domain.KeyView{}, domain.Errorf(domain.ENotFound, "key %s not found in organization %s", keyID, org)
	}
	if err != nil {
		return domain.KeyView{}, classify(fmt.Errorf("get key %s: %w", keyID, err))
	}
	return row.view(r.now()), nil
}

// ListEvents returns the organization's audit events with a stream sequence
// above after, oldest first, at most limit (1 to 1000; 0 means 100). Each is
// the stored event envelope with "sequence" added as its first member.
// nextAfter is the sequence of the last event returned, or after when none
// is: pass it as the next call's after.
//
// Errors: invalid_argument for a limit out of range (CheckEventLimit); other
// errors are database failures.
func (r *ReadModel) ListEvents(ctx context.Context, org string, after uint64, limit int) (events []json.RawMessage, nextAfter uint64, err error) {
	limit = cmp.Or(limit, DefaultEventLimit)
	if err := CheckEventLimit(limit); err != nil {
		return nil, after, err
	}
	events = []json.RawMessage{}
	if after >= math.MaxInt64 { // no bigint sequence lies above it
		return events, after, nil
	}
	rows, err := r.pool.Query(ctx,
		"SELECT seq, envelope::text FROM audit_events WHERE org_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
		org, int64(after), limit)
	if err != nil {
		return nil, after, classify(fmt.Errorf("list events of organization %s: %w", org, err))
	}
	type eventRow struct {
		Seq      int64
		Envelope string
	}
	found, err := pgx.CollectRows(rows, pgx.RowToStructByPos[eventRow])
	if err != nil {
		return nil, after, classify(fmt.Errorf("list events of organization %s: %w", org, err))
	}
	nextAfter = after
	for _, e := range found {
		msg, err := withSequence(uint64(e.Seq), []byte(e.Envelope))
		if err != nil {
			return nil, after, classify(fmt.Errorf("audit event %d of organization %s: %w", e.Seq, org, err))
		}
		events = append(events, msg)
		nextAfter = uint64(e.Seq)
	}
	return events, nextAfter, nil
}

// withSequence returns the JSON object envelope with "sequence": seq
// inserted as its first member.
func withSequence(seq uint64, envelope []byte) (json.RawMessage, error) {
	body := bytes.TrimSpace(envelope)
	if len(body) < 2 || body[0] != '{' || body[len(body)-1] != '}' {
		return nil, errors.New("stored envelope is not a JSON object")
	}
	rest := bytes.TrimSpace(body[1:])
	out := make([]byte, 0, len(body)+32)
	out = append(out, `{"sequence":`...)
	out = strconv.AppendUint(out, seq, 10)
	if len(rest) > 1 { // more than the closing brace
		out = append(out, ',')
	}
	out = append(out, rest...)
	return out, nil
}

// ListPermissions returns the permission catalog, retired permissions
// included, sorted by slug (byte order). Errors are database failures.
func (r *ReadModel) ListPermissions(ctx context.Context) ([]domain.Permission, error) {
	rows, err := r.pool.Query(ctx, `SELECT slug, description, status FROM permissions ORDER BY slug COLLATE "C"`)
	if err != nil {
		return nil, classify(fmt.Errorf("list permissions: %w", err))
	}
	perms, err := pgx.CollectRows(rows, pgx.RowToStructByPos[domain.Permission])
	if err != nil {
		return nil, classify(fmt.Errorf("list permissions: %w", err))
	}
	if perms == nil {
		perms = []domain.Permission{}
	}
	return perms, nil
}

// AppliedSequence returns the last stream sequence the read models applied
// (0 before the first). Errors are database failures.
func (r *ReadModel) AppliedSequence(ctx context.Context) (uint64, error) {
	seq, err := migrations.AppliedSequence(ctx, r.pool)
	if err != nil {
		return 0, classify(fmt.Errorf("read the read models' applied sequence: %w", err))
	}
	return seq, nil
}

// WaitForSequence waits until the read models have applied stream sequence
// seq, for at most max, and returns the applied sequence. It polls, every
// 2 ms at first and backing off to every 25 ms.
//
// Errors: unavailable when max passes first; ctx.Err() when ctx ends first;
// other errors are database failures.
func (r *ReadModel) WaitForSequence(ctx context.Context, seq uint64, max time.Duration) (applied uint64, err error) {
	deadline := time.Now().Add(max)
	poll := waitPollStart
	var timer *time.Timer
	for {
		applied, err = r.AppliedSequence(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return applied, ctx.Err()
			}
			return applied, err
		}
		if applied >= seq {
			return applied, nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			return applied, domain.Errorf(domain.EUnavailable, "read model has applied sequence %d, not yet %d; retry", applied, seq)
		}
		wait := min(poll, left)
		if timer == nil {
			timer = time.NewTimer(wait)
			defer timer.Stop()
		} else {
			timer.Reset(wait)
		}
		select {
		case <-ctx.Done():
			return applied, ctx.Err()
		case <-timer.C:
		}
		poll = min(2*poll, waitPollMax)
	}
}

// MaxQueryLength bounds a listing's q.
const MaxQueryLength = 200

// CheckKeyFilter returns invalid_argument unless the filters of f (owner
// type and id, q, permission) are well-formed.
func CheckKeyFilter(f KeyFilter) error {
	switch f.OwnerType {
	case "", domain.OwnerOrganization, domain.OwnerUser:
	default:
		return domain.Errorf(domain.EInvalid, "owner_type must be organization or user, got %q", f.OwnerType)
	}
	if f.OwnerID != "" {
		if f.OwnerType == domain.OwnerOrganization {
			return domain.Errorf(domain.EInvalid, "owner_id names a user; it cannot be combined with owner_type=organization")
		}
		if err := domain.CheckUserID("owner_id", f.OwnerID); err != nil {
			return err
		}
	}
	if len(f.Q) > MaxQueryLength {
		return domain.Errorf(domain.EInvalid, "q must be at most %d bytes", MaxQueryLength)
	}
	if err := domain.CheckText("q", f.Q, false); err != nil {
		return err
	}
	if f.Permission != "" {
		if err := domain.CheckSlug(f.Permission); err != nil {
			return err
		}
	}
	return nil
}

// escapeLike escapes LIKE's wildcards (and its escape character) in s.
func escapeLike(s string) string {
	return strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(s)
}

// ListRoles returns the role catalog, retired roles included, sorted by slug
// (byte order). Errors are database failures.
func (r *ReadModel) ListRoles(ctx context.Context) ([]domain.Role, error) {
	rows, err := r.pool.Query(ctx, `SELECT slug, description, permissions, status FROM `+migrations.RolesTable+` ORDER BY slug COLLATE "C"`)
	if err != nil {
		return nil, classify(fmt.Errorf("list roles: %w", err))
	}
	roles, err := pgx.CollectRows(rows, pgx.RowToStructByPos[domain.Role])
	if err != nil {
		return nil, classify(fmt.Errorf("list roles: %w", err))
	}
	if roles == nil {
		roles = []domain.Role{}
	}
	return roles, nil
}

// UserKeyIDs returns the ids of the keys user owns in org that the key
// listing does not hold as revoked, oldest first (served by
// keys_org_owner). It reads the listing as it is: see UserKeys for a
// directory that catches up with the stream first.
func (r *ReadModel) UserKeyIDs(ctx context.Context, org, user string) ([]string, error) {
	rows, err := r.pool.Query(ctx, `SELECT key_id FROM keys
WHERE org_id = $1 AND owner_type = 'user' AND owner_id = $2 AND status <> 'revoked' ORDER BY key_id`, org, user)
	if err != nil {
		return nil, classify(fmt.Errorf("list keys of user %s: %w", user, err))
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, classify(fmt.Errorf("list keys of user %s: %w", user, err))
	}
	return ids, nil
}

// UserKeys is the domain.KeyDirectory of keyd: before listing a user's keys
// it waits (at most Wait, default 5 s) until the key listing has applied
// the stream's last sequence as StreamLast reports it, so every key whose
// create reply was sent before the call is found.
type UserKeys struct {
	Reads      *ReadModel
	StreamLast func(ctx context.Context) (uint64, error)
	Wait       time.Duration
}

// UserKeyIDs implements domain.KeyDirectory; seq is the sequence the
// listing had applied (at least the stream's last when called). Errors:
// unavailable when the listing does not catch up in time; database and
// stream failures.
func (u UserKeys) UserKeyIDs(ctx context.Context, org, user string) (ids []string, seq uint64, err error) {
	if u.StreamLast != nil {
		last, err := u.StreamLast(ctx)
		if err != nil {
			return nil, 0, domain.Wrap(err, domain.EUnavailable, "the event stream is unavailable; retry")
		}
		wait := u.Wait
		if wait <= 0 {
			wait = 5 * time.Second
		}
		if seq, err = u.Reads.WaitForSequence(ctx, last, wait); err != nil {
			return nil, 0, err
		}
	} else if seq, err = u.Reads.AppliedSequence(ctx); err != nil {
		return nil, 0, err
	}
	ids, err = u.Reads.UserKeyIDs(ctx, org, user)
	return ids, seq, err
}

// listQuery is the SQL and arguments of ListKeys (a page of limit+1 rows:
// one more tells whether a next page exists). Every filter is served by an
// index of 0001 and 0004 (see 0004_owners_roles_resources.sql).
func listQuery(org string, f KeyFilter, limit int, now time.Time) (string, []any, error) {
	// Every piece of SQL below is a constant; values go in as parameters.
	q := "SELECT " + keyColumns + " FROM keys WHERE org_id = $1"
	args := []any{org}
	switch f.Status {
	case "", "all":
	case domain.StatusActive:
		args = append(args, now)
		q += " AND status = 'active' AND (expires_at IS NULL OR expires_at > $2)"
	case domain.StatusRevoked:
		q += " AND status = 'revoked'"
	case domain.StatusExpired:
		args = append(args, now)
		q += " AND status <> 'revoked' AND expires_at <= $2"
	case domain.StatusSuspended:
		args = append(args, now)
		q += " AND status = 'suspended' AND (expires_at IS NULL OR expires_at > $2)"
	}
	if err := CheckKeyFilter(f); err != nil {
		return "", nil, err
	}
	if f.OwnerID != "" {
		args = append(args, f.OwnerID)
		q += " AND owner_type = 'user' AND owner_id = $" + strconv.Itoa(len(args))
	} else if f.OwnerType != "" {
		args = append(args, f.OwnerType)
		q += " AND owner_type = $" + strconv.Itoa(len(args))
	}
	if f.Q != "" {
		// keys_name_trgm serves the substring, keys_org_mask4 the mask.
		args = append(args, "%"+escapeLike(strings.ToLower(f.Q))+"%")
		cond := "lower(name) LIKE $" + strconv.Itoa(len(args))
		if len(f.Q) == 4 {
			args = append(args, f.Q)
			cond = "(" + cond + " OR right(mask, 4) = $" + strconv.Itoa(len(args)) + ")"
		}
		q += " AND " + cond
	}
	if f.Permission != "" {
		args = append(args, []string{f.Permission})
		q += " AND effective_permissions @> $" + strconv.Itoa(len(args)) + "::text[]"
	}
	if f.ExpiresBefore != nil {
		args = append(args, *f.ExpiresBefore)
		q += " AND expires_at < $" + strconv.Itoa(len(args))
	}
	if f.Cursor != "" {
		after, ok := decodeCursor(f.Cursor)
		if !ok {
			return "", nil, domain.Errorf(domain.EInvalid, "cursor is not valid")
		}
		args = append(args, after)
		q += " AND key_id < $" + strconv.Itoa(len(args))
	}
	args = append(args, limit+1)
	q += " ORDER BY key_id DESC LIMIT $" + strconv.Itoa(len(args))

	return q, args, nil
}
