package projections

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/eventstore"
	"github.com/keyd-dev/keyd/migrations"
)

// Tables names the four read-model tables one projection writes, and the row
// of projection_checkpoints that holds the last stream sequence they reflect.
// The live projection writes DefaultTables; a rebuild writes fresh tables of
// the same shape and swaps them in.
type Tables struct {
	Keys         string // the key listing
	Audit        string // audit_events
	Permissions  string // the permission catalog
	Verification string // verification_keys, the verifier's snapshot
	Checkpoint   string // name of the row in projection_checkpoints
	Policies     string // organization policies (0003_lifecycle.sql)
	Roles        string // the role catalog
}

// DefaultTables are the live read models of migrations/0001_read_models.sql,
// all under the checkpoint "read_models". Because one transaction writes all
// four tables and that checkpoint, a reader that reads the checkpoint and
// the tables in one snapshot sees exactly the effect of the stream up to
// that sequence (the verifier boots that way).
var DefaultTables = Tables{
	Keys:         migrations.KeysTable,
	Audit:        migrations.AuditTable,
	Permissions:  migrations.PermissionsTable,
	Verification: migrations.VerificationTable,
	Checkpoint:   migrations.ReadModelsProjection,
	Policies:     migrations.PoliciesTable,
	Roles:        migrations.RolesTable,
}

// checkpoints is the checkpoint table, as an SQL identifier.
var checkpoints = ident(migrations.CheckpointsTable)

// list returns the table names in a fixed order.
func (t Tables) list() []string {
	return []string{t.Keys, t.Audit, t.Permissions, t.Verification, t.Policies, t.Roles}
}

// EventError is an event a projection cannot apply: its envelope does not
// decode (domain.DecodeEvent), a key event carries no valid key state, a
// catalog event no catalog, or the event is on the wrong subject. A
// projection stops before such an event and never skips it: the stream is
// the source of truth, and a read model that silently lacked an event would
// be wrong in ways nobody could see.
type EventError struct {
	Seq     uint64 // stream sequence of the event
	Subject string
	Err     error
}

func (e *EventError) Error() string {
	return fmt.Sprintf("projections: the event at stream sequence %d (subject %q) cannot be applied: %v", e.Seq, e.Subject, e.Err)
}

func (e *EventError) Unwrap() error { return e.Err }

// decoded is one record, decoded and checked, ready to apply.
type decoded struct {
	seq     uint64
	subject string
	// rejected is why the event is set aside ("": it is not): by the
	// stream tail (signature) or by the invariants on apply.
	rejected       string
	raw            []byte // the envelope as stored
	ev             domain.Event
	key            *domain.KeyState    // key events
	digest         []byte              // key events: the digest, decoded from hex
	catalog        []domain.Permission // catalog events: the full catalog after it
	catalogVersion int64               // catalog events: the catalog's version after it
	org            *domain.OrgState    // organization events: the organization after it
	roles          []domain.Role       // role events: the full role catalog after it
	role           string              // role events: the role the event changed
	rolesVersion   int64               // role events: the role catalog's version after it
}

// decodeRecord decodes a stream record. Errors are *EventError.
func decodeRecord(r domain.Record) (decoded, error) {
	fail := func(err error) (decoded, error) {
		return decoded{}, &EventError{Seq: r.Sequence, Subject: r.Subject, Err: err}
	}
	ev, err := domain.DecodeEvent(r.Data)
	if err != nil {
		return fail(err)
	}
	d := decoded{seq: r.Sequence, subject: r.Subject, raw: r.Data, ev: ev}
	if r.Subject != "" {
		if err := ev.CheckSubject(r.Subject); err != nil {
			return fail(err)
		}
	}
	if ev.IsKeyEvent() {
		k, err := ev.KeyState()
		if err != nil {
			return fail(err)
		}
		dg, err := hex.DecodeString(k.Digest)
		if err != nil || len(dg) == 0 {
			return fail(fmt.Errorf("event %s carries no valid digest for key %s", ev.ID, ev.KeyID))
		}
		d.key, d.digest = &k, dg
		return d, nil
	}
	if ev.IsOrgEvent() {
		o, err := ev.OrgState()
		if err != nil {
			return fail(err)
		}
		d.org = &o
		return d, nil
	}
	if ev.IsRoleEvent() {
		rc, err := ev.RoleCatalog()
		if err != nil {
			return fail(err)
		}
		var one struct {
			Role domain.Role `json:"role"`
		}
		if err := json.Unmarshal(ev.Data, &one); err != nil {
			return fail(err)
		}
		d.roles, d.role, d.rolesVersion = rc.List(), one.Role.Slug, rc.Version()
		return d, nil
	}
	c, err := ev.Catalog()
	if err != nil {
		return fail(err)
	}
	d.catalog, d.catalogVersion = c.List(), c.Version()
	return d, nil
}

// decodeDelivery decodes a delivery of the stream tail; a message the tail
// set aside is not decoded, only carried (to advance the checkpoint).
func decodeDelivery(d eventstore.Delivery) (decoded, error) {
	if d.Rejected != "" {
		return decoded{seq: d.Sequence, subject: d.Subject, rejected: d.Rejected}, nil
	}
	return decodeRecord(d.Record)
}

// decodeRecords decodes recs, which must be in ascending stream sequence.
// Errors: *EventError for a record that cannot be applied, and an error for
// records out of order.
func decodeRecords(recs []domain.Record) ([]decoded, error) {
	ds := make([]decoded, 0, len(recs))
	for i, r := range recs {
		if i > 0 && r.Sequence <= recs[i-1].Sequence {
			return nil, fmt.Errorf("projections: records out of order: sequence %d after %d", r.Sequence, recs[i-1].Sequence)
		}
		d, err := decodeRecord(r)
		if err != nil {
			return nil, err
		}
		ds = append(ds, d)
	}
	return ds, nil
}

// statements are the SQL of one Tables.
type statements struct {
	checkpoint       string
	lockCheckpoint   string
	insertCheckpoint string
	updateCheckpoint string
	upsertKeys       string
	upsertVerif      string
	insertAudit      string
	upsertPerms      string
	deletePerms      string
	keyVersions      string
	catalogVersion   string
	upsertPolicies   string
	orgVersions      string
	upsertRoles      string
	effective        string
	rolesVersion     string
}

func statementsFor(t Tables) *statements {
	id := func(name string) string { return pgx.Identifier{name}.Sanitize() }
	return &statements{
		checkpoint:       t.Checkpoint,
		lockCheckpoint:   `SELECT last_seq FROM ` + checkpoints + ` WHERE name = $1 FOR UPDATE`,
		insertCheckpoint: `INSERT INTO ` + checkpoints + ` (name) VALUES ($1) ON CONFLICT (name) DO NOTHING`,
		updateCheckpoint: `UPDATE ` + checkpoints + ` SET last_seq = $2, updated_at = now() WHERE name = $1`,
		upsertKeys: `INSERT INTO ` + id(t.Keys) + ` AS t
  (key_id, org_id, name, owner_type, owner_id, mask, permissions, status, created_at, expires_at, revoked_at, metadata, version, last_seq,
   expiring_noticed, expired_noticed, roles, resources)
SELECT u.key_id, u.org_id, u.name, u.owner_type, u.owner_id, u.mask, u.permissions::text[], u.status,
       u.created_at, u.expires_at, u.revoked_at, u.metadata::jsonb, u.version, u.last_seq,
       u.expiring_noticed, u.expired_noticed, u.roles::text[], u.resources::text[]
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
            $9::timestamptz[], $10::timestamptz[], $11::timestamptz[], $12::text[], $13::int8[], $14::int8[],
            $15::timestamptz[], $16::timestamptz[], $17::text[], $18::text[])
  AS u(key_id, org_id, name, owner_type, owner_id, mask, permissions, status, created_at, expires_at, revoked_at, metadata, version, last_seq,
       expiring_noticed, expired_noticed, roles, resources)
ON CONFLICT (key_id) DO UPDATE SET
  org_id = excluded.org_id, name = excluded.name, owner_type = excluded.owner_type, owner_id = excluded.owner_id,
  mask = excluded.mask, permissions = excluded.permissions, status = excluded.status, created_at = excluded.created_at,
  expires_at = excluded.expires_at, revoked_at = excluded.revoked_at, metadata = excluded.metadata,
  version = excluded.version, last_seq = excluded.last_seq,
  expiring_noticed = excluded.expiring_noticed, expired_noticed = excluded.expired_noticed,
  roles = excluded.roles, resources = excluded.resources
WHERE t.last_seq < excluded.last_seq`,
		upsertVerif: `INSERT INTO ` + id(t.Verification) + ` AS t
  (digest, key_id, org_id, owner_type, owner_id, name, permissions, expires_at, status, metadata, version, last_seq, roles, resources)
SELECT u.digest, u.key_id, u.org_id, u.owner_type, u.owner_id, u.name, u.permissions::text[], u.expires_at,
       u.status, u.metadata::jsonb, u.version, u.last_seq, u.roles::text[], u.resources::text[]
FROM unnest($1::bytea[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::timestamptz[], $9::text[], $10::text[], $11::int8[], $12::int8[], $13::text[], $14::text[])
  AS u(digest, key_id, org_id, owner_type, owner_id, name, permissions, expires_at, status, metadata, version, last_seq, roles, resources)
ON CONFLICT (digest) DO UPDATE SET
  key_id = excluded.key_id, org_id = excluded.org_id, owner_type = excluded.owner_type, owner_id = excluded.owner_id,
  name = excluded.name, permissions = excluded.permissions, expires_at = excluded.expires_at,
  status = excluded.status, metadata = excluded.metadata, version = excluded.version, last_seq = excluded.last_seq,
  roles = excluded.roles, resources = excluded.resources
WHERE t.last_seq < excluded.last_seq`,
		insertAudit: `INSERT INTO ` + id(t.Audit) + `
  (seq, org_id, key_id, event_id, type, occurred_at, envelope)
SELECT u.seq, u.org_id, u.key_id, u.event_id, u.type, u.occurred_at, u.envelope::jsonb
FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::text[])
  AS u(seq, org_id, key_id, event_id, type, occurred_at, envelope)
ON CONFLICT (seq) DO NOTHING`,
		upsertPerms: `INSERT INTO ` + id(t.Permissions) + ` AS t (slug, description, status, last_seq, version)
SELECT u.slug, u.description, u.status, $4::int8, $5::int8
FROM unnest($1::text[], $2::text[], $3::text[]) AS u(slug, description, status)
ON CONFLICT (slug) DO UPDATE SET
  description = excluded.description, status = excluded.status, last_seq = excluded.last_seq, version = excluded.version
WHERE t.last_seq < excluded.last_seq`,
		keyVersions:    `SELECT key_id, version, status FROM ` + id(t.Keys) + ` WHERE key_id = ANY($1::text[])`,
		catalogVersion: `SELECT coalesce(max(version), 0) FROM ` + id(t.Permissions),
		// The catalog event carries the whole catalog: a slug missing from
		// it is gone (the domain never removes one today).
		deletePerms: `DELETE FROM ` + id(t.Permissions) + ` WHERE last_seq < $2::int8 AND slug <> ALL($1::text[])`,
		upsertPolicies: `INSERT INTO ` + id(t.Policies) + ` AS t (org_id, policy, expiry_notice_seconds, allowed_cidrs, last_seq, version)
SELECT u.org_id, u.policy::jsonb, u.notice, CASE WHEN u.cidrs = '' THEN NULL ELSE u.cidrs::text[] END, u.last_seq, u.version
FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::int8[], $6::int8[]) AS u(org_id, policy, notice, cidrs, last_seq, version)
ON CONFLICT (org_id) DO UPDATE SET
  policy = excluded.policy, expiry_notice_seconds = excluded.expiry_notice_seconds,
  allowed_cidrs = excluded.allowed_cidrs, last_seq = excluded.last_seq, version = excluded.version
WHERE t.last_seq < excluded.last_seq`,
		orgVersions: `SELECT org_id, version FROM ` + id(t.Policies) + ` WHERE org_id = ANY($1::text[])`,
		upsertRoles: `INSERT INTO ` + id(t.Roles) + ` AS t (slug, description, permissions, status, last_seq, version)
SELECT u.slug, u.description, u.permissions::text[], u.status, $5::int8, $6::int8
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS u(slug, description, permissions, status)
ON CONFLICT (slug) DO UPDATE SET
  description = excluded.description, permissions = excluded.permissions, status = excluded.status,
  last_seq = excluded.last_seq, version = excluded.version
WHERE t.last_seq < excluded.last_seq`,
		rolesVersion: `SELECT coalesce(max(version), 0) FROM ` + id(t.Roles),
		// Effective permissions of the keys this batch touched ($1), of the
		// holders of the roles it changed ($2, through keys_roles) and of the
		// keys holding a permission the catalog retired ($3, through
		// keys_effective_permissions): own permissions plus those of active
		// roles, without retired ones, in byte order.
		effective: `UPDATE ` + id(t.Keys) + ` AS k SET effective_permissions = ARRAY(
  SELECT DISTINCT x.p COLLATE "C" FROM (
    SELECT unnest(k.permissions) AS p
    UNION ALL
    SELECT unnest(r.permissions) FROM ` + id(t.Roles) + ` AS r WHERE r.slug = ANY(k.roles) AND r.status = 'active'
  ) AS x
  WHERE NOT EXISTS (SELECT 1 FROM ` + id(t.Permissions) + ` AS pr WHERE pr.slug = x.p AND pr.status = 'retired')
  ORDER BY 1)
WHERE k.key_id = ANY($1::text[]) OR k.roles && $2::text[] OR k.effective_permissions && $3::text[]`,
	}
}

// rows are the column arrays of one batch's writes, one entry per row.
type rows struct {
	keys  keyRows
	verif verifRows
	audit auditRows

	hasCatalog     bool
	catalogSeq     int64
	catalogVersion int64
	perms          permRows

	policies policyRows

	hasRoles     bool
	rolesSeq     int64
	rolesVersion int64
	roles        roleRows
	changedRoles []string // slugs of the roles this batch's events changed
	retired      []string // retired permissions, when the batch has a catalog event
}

type roleRows struct {
	slug, description, permissions, status []string
}

type policyRows struct {
	orgID, policy, cidrs     []string
	notice, lastSeq, version []int64
}

func (r *policyRows) add(d decoded) error {
	p := d.org.Policy
	b, err := json.Marshal(p)
	if err != nil {
		return &EventError{Seq: d.seq, Err: err}
	}
	cidrs := ""
	if p.AllowedCIDRs != nil {
		cidrs = textArrayLiteral(p.AllowedCIDRs)
	}
	r.orgID = append(r.orgID, p.OrgID)
	r.policy = append(r.policy, string(b))
	r.notice = append(r.notice, p.ExpiryNoticeSeconds)
	r.cidrs = append(r.cidrs, cidrs)
	r.lastSeq = append(r.lastSeq, int64(d.seq))
	r.version = append(r.version, d.org.Version)
	return nil
}

type keyRows struct {
	keyID, orgID, name, ownerType, ownerID, mask, permissions, status []string
	createdAt, expiresAt, revokedAt                                   []pgtype.Timestamptz
	metadata                                                          []string
	version, lastSeq                                                  []int64
	expiringNoticed, expiredNoticed                                   []pgtype.Timestamptz
	roles, resources                                                  []string
}

type verifRows struct {
	digest                                                      [][]byte
	keyID, orgID, ownerType, ownerID, name, permissions, status []string
	expiresAt                                                   []pgtype.Timestamptz
	metadata                                                    []string
	version, lastSeq                                            []int64
	roles, resources                                            []string
}

type auditRows struct {
	seq                        []int64
	orgID, keyID, eventID, typ []string
	occurredAt                 []pgtype.Timestamptz
	envelope                   []string
}

type permRows struct {
	slug, description, status []string
}

// buildRows turns decoded events (ascending sequence) into rows, keeping
// for each key (and each digest) only its last state.
func buildRows(ds []decoded) (*rows, error) {
	rs := &rows{}
	lastKey := make(map[string]int, len(ds))    // key id -> index in ds
	lastDigest := make(map[string]int, len(ds)) // digest -> index in ds
	lastCatalog, lastRoles := -1, -1
	lastOrg := map[string]int{}
	for i, d := range ds {
		if d.rejected != "" {
			continue
		}
		if d.org != nil {
			lastOrg[d.org.Policy.OrgID] = i
			continue
		}
		if d.roles != nil || d.role != "" {
			lastRoles = i
			rs.changedRoles = append(rs.changedRoles, d.role)
			continue
		}
		if d.key == nil {
			lastCatalog = i
			continue
		}
		lastKey[d.key.ID] = i
		lastDigest[string(d.digest)] = i
		rs.audit.add(d)
	}
	// Key rows go in key id order: verifiers' last-use flushes
	// (verifier/lastused.go) lock keys rows in that order too,
	// so the two can never deadlock.
	keyRows := make([]int, 0, len(lastKey))
	for _, i := range lastKey {
		keyRows = append(keyRows, i)
	}
	slices.SortFunc(keyRows, func(a, b int) int { return strings.Compare(ds[a].key.ID, ds[b].key.ID) })
	for _, i := range keyRows {
		if err := rs.keys.add(ds[i]); err != nil {
			return nil, err
		}
	}
	for i, d := range ds {
		if d.key == nil || d.rejected != "" {
			continue
		}
		if lastDigest[string(d.digest)] == i {
			if err := rs.verif.add(d); err != nil {
				return nil, err
			}
		}
	}
	if lastCatalog >= 0 {
		rs.setCatalog(ds[lastCatalog])
	}
	orgRows := make([]int, 0, len(lastOrg))
	for _, i := range lastOrg {
		orgRows = append(orgRows, i)
	}
	slices.Sort(orgRows)
	for _, i := range orgRows {
		if err := rs.policies.add(ds[i]); err != nil {
			return nil, err
		}
	}
	if lastRoles >= 0 {
		d := ds[lastRoles]
		rs.hasRoles, rs.rolesSeq, rs.rolesVersion = true, int64(d.seq), d.rolesVersion
		for _, r := range d.roles {
			rs.roles.slug = append(rs.roles.slug, r.Slug)
			rs.roles.description = append(rs.roles.description, r.Description)
			rs.roles.permissions = append(rs.roles.permissions, textArrayLiteral(r.Permissions))
			rs.roles.status = append(rs.roles.status, r.Status)
		}
	}
	return rs, nil
}

// setCatalog makes the catalog of catalog event d the permission rows.
func (rs *rows) setCatalog(d decoded) {
	rs.hasCatalog, rs.catalogSeq, rs.catalogVersion = true, int64(d.seq), d.catalogVersion
	for _, p := range d.catalog {
		rs.perms.slug = append(rs.perms.slug, p.Slug)
		rs.perms.description = append(rs.perms.description, p.Description)
		rs.perms.status = append(rs.perms.status, p.Status)
		if p.Status == domain.PermissionRetired {
			rs.retired = append(rs.retired, p.Slug)
		}
	}
}

func (r *keyRows) add(d decoded) error {
	k := d.key
	md, err := metadataJSON(k.Metadata)
	if err != nil {
		return &EventError{Seq: d.seq, Err: err}
	}
	r.keyID = append(r.keyID, k.ID)
	r.orgID = append(r.orgID, k.OrgID)
	r.name = append(r.name, k.Name)
	r.ownerType = append(r.ownerType, k.Owner.Type)
	r.ownerID = append(r.ownerID, k.Owner.ID)
	r.mask = append(r.mask, k.Mask)
	r.permissions = append(r.permissions, textArrayLiteral(k.Permissions))
	r.status = append(r.status, k.Status)
	r.createdAt = append(r.createdAt, pgtype.Timestamptz{Time: k.CreatedAt, Valid: true})
	r.expiresAt = append(r.expiresAt, timestamptz(k.ExpiresAt))
	r.revokedAt = append(r.revokedAt, timestamptz(k.RevokedAt))
	r.metadata = append(r.metadata, md)
	r.version = append(r.version, k.Version)
	r.lastSeq = append(r.lastSeq, int64(d.seq))
	r.expiringNoticed = append(r.expiringNoticed, timestamptz(k.ExpiringNoticed))
	r.expiredNoticed = append(r.expiredNoticed, timestamptz(k.ExpiredNoticed))
	r.roles = append(r.roles, textArrayLiteral(k.Roles))
	r.resources = append(r.resources, textArrayLiteral(k.Resources))
	return nil
}

func (r *verifRows) add(d decoded) error {
	k := d.key
	md, err := metadataJSON(k.Metadata)
	if err != nil {
		return &EventError{Seq: d.seq, Err: err}
	}
	r.digest = append(r.digest, d.digest)
	r.keyID = append(r.keyID, k.ID)
	r.orgID = append(r.orgID, k.OrgID)
	r.ownerType = append(r.ownerType, k.Owner.Type)
	r.ownerID = append(r.ownerID, k.Owner.ID)
	r.name = append(r.name, k.Name)
	r.permissions = append(r.permissions, textArrayLiteral(k.Permissions))
	r.expiresAt = append(r.expiresAt, timestamptz(k.ExpiresAt))
	r.status = append(r.status, k.Status)
	r.metadata = append(r.metadata, md)
	r.version = append(r.version, k.Version)
	r.lastSeq = append(r.lastSeq, int64(d.seq))
	r.roles = append(r.roles, textArrayLiteral(k.Roles))
	r.resources = append(r.resources, textArrayLiteral(k.Resources))
	return nil
}

func (r *auditRows) add(d decoded) {
	r.seq = append(r.seq, int64(d.seq))
	r.orgID = append(r.orgID, d.ev.OrgID)
	r.keyID = append(r.keyID, d.ev.KeyID)
	r.eventID = append(r.eventID, d.ev.ID)
	r.typ = append(r.typ, d.ev.Type)
	r.occurredAt = append(r.occurredAt, pgtype.Timestamptz{Time: d.ev.OccurredAt, Valid: true})
	r.envelope = append(r.envelope, string(d.raw))
}

// queue adds the writes of rs to b.
func (rs *rows) queue(b *pgx.Batch, stmts *statements) {
	if k := &rs.keys; len(k.keyID) > 0 {
		b.Queue(stmts.upsertKeys, k.keyID, k.orgID, k.name, k.ownerType, k.ownerID, k.mask, k.permissions, k.status,
			k.createdAt, k.expiresAt, k.revokedAt, k.metadata, k.version, k.lastSeq, k.expiringNoticed, k.expiredNoticed, k.roles, k.resources)
	}
	if v := &rs.verif; len(v.keyID) > 0 {
		b.Queue(stmts.upsertVerif, v.digest, v.keyID, v.orgID, v.ownerType, v.ownerID, v.name, v.permissions,
			v.expiresAt, v.status, v.metadata, v.version, v.lastSeq, v.roles, v.resources)
	}
	if a := &rs.audit; len(a.seq) > 0 {
		b.Queue(stmts.insertAudit, a.seq, a.orgID, a.keyID, a.eventID, a.typ, a.occurredAt, a.envelope)
	}
	if p := &rs.policies; len(p.orgID) > 0 {
		b.Queue(stmts.upsertPolicies, p.orgID, p.policy, p.notice, p.cidrs, p.lastSeq, p.version)
	}
	if rs.hasCatalog {
		p := &rs.perms
		b.Queue(stmts.upsertPerms, p.slug, p.description, p.status, rs.catalogSeq, rs.catalogVersion)
		b.Queue(stmts.deletePerms, p.slug, rs.catalogSeq)
	}
	if rs.hasRoles {
		r := &rs.roles
		b.Queue(stmts.upsertRoles, r.slug, r.description, r.permissions, r.status, rs.rolesSeq, rs.rolesVersion)
	}
	if len(rs.keys.keyID) > 0 || len(rs.changedRoles) > 0 || len(rs.retired) > 0 {
		b.Queue(stmts.effective, orEmptyList(rs.keys.keyID), orEmptyList(rs.changedRoles), orEmptyList(rs.retired))
	}
}

func orEmptyList(ss []string) []string {
	if ss == nil {
		return []string{}
	}
	return ss
}

// applyDecoded applies ds, in ascending stream sequence, to the tables of
// stmts within tx and advances their checkpoint, which it creates at 0 if
// missing. It returns the sequence the tables reflect afterwards: the
// greatest of the old checkpoint and the last sequence of ds. All writes go
// in one round trip.
//
// It locks the checkpoint row (SELECT ... FOR UPDATE), so concurrent writers
// of one projection serialize, and drops events at or below the checkpoint,
// so applying a batch again changes nothing; rows are also guarded by their
// own last_seq. The caller commits tx: only then are the rows and the
// checkpoint visible, together.
//
// Effects: every key event upserts the key's row in the key listing (never
// touching last_used_at, which verifiers maintain) and in the verification
// snapshot, by key id and digest, to the full key state it carries (several
// events of one key collapse to the last); every key event is inserted into
// the audit log with its envelope; the last catalog event sets the
// permission catalog to the catalog it carries. Catalog events are not
// audit events (they belong to no organization).
//
// Errors: *EventError for an event whose rows cannot be built (nothing is
// then applied; the caller should roll back), and Postgres errors.
func applyDecoded(ctx context.Context, tx pgx.Tx, stmts *statements, ds []decoded) (uint64, error) {
	applied, _, err := applyChecked(ctx, tx, stmts, ds)
	return applied, err
}

// applyChecked is applyDecoded that also returns the events it set aside:
// those the tail rejected (signature) and those that break the invariants
// on apply (eventstore.KeyEventInvariant, CatalogInvariant, OrgInvariant) against
// the tables' state. Set-aside events change no row; the checkpoint moves
// past them.
func applyChecked(ctx context.Context, tx pgx.Tx, stmts *statements, ds []decoded) (uint64, []eventstore.Rejection, error) {
	last, err := lockCheckpoint(ctx, tx, stmts)
	if err != nil {
		return 0, nil, err
	}
	i := 0
	for i < len(ds) && ds[i].seq <= last {
		i++
	}
	ds = ds[i:]
	if len(ds) == 0 {
		return last, nil, nil
	}
	rejected, err := checkInvariants(ctx, tx, stmts, ds)
	if err != nil {
		return 0, nil, err
	}
	applied, err := applyRows(ctx, tx, stmts, ds)
	return applied, rejected, err
}

// checkInvariants marks (decoded.rejected) the events of ds that break the
// invariants on apply, given the tables' state and the events of ds before
// them, and returns every event of ds set aside. One query for the keys of
// the batch, one for its organizations, one for the catalog's version.
func checkInvariants(ctx context.Context, tx pgx.Tx, stmts *statements, ds []decoded) ([]eventstore.Rejection, error) {
	type keyAt struct {
		version int64
		revoked bool
	}
	var ids []string
	for _, d := range ds {
		if d.rejected == "" && d.key != nil {
			ids = append(ids, d.key.ID)
		}
	}
	keys := make(map[string]keyAt, len(ids))
	if len(ids) > 0 {
		rows, err := tx.Query(ctx, stmts.keyVersions, ids)
		if err != nil {
			return nil, fmt.Errorf("projections: reading key versions: %w", err)
		}
		for rows.Next() {
			var id, status string
			var v int64
			if err := rows.Scan(&id, &v, &status); err != nil {
				rows.Close()
				return nil, fmt.Errorf("projections: reading key versions: %w", err)
			}
			keys[id] = keyAt{version: v, revoked: status == domain.StatusRevoked}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("projections: reading key versions: %w", err)
		}
	}
	orgs, err := orgVersions(ctx, tx, stmts, ds)
	if err != nil {
		return nil, err
	}
	catalog, roles := int64(-1), int64(-1) // read when needed
	var out []eventstore.Rejection
	for i := range ds {
		d := &ds[i]
		switch {
		case d.rejected != "":
		case d.key != nil:
			cur, known := keys[d.key.ID]
			if d.rejected = eventstore.KeyEventInvariant(d.ev.Type, known, cur.version, cur.revoked, d.key.Version); d.rejected == "" {
				keys[d.key.ID] = keyAt{version: d.key.Version, revoked: d.key.Status == domain.StatusRevoked}
			}
		case d.org != nil:
			org := d.org.Policy.OrgID
			if d.rejected = eventstore.OrgInvariant(orgs[org], d.org.Version); d.rejected == "" {
				orgs[org] = d.org.Version
			}
		case d.roles != nil || d.role != "":
			if roles < 0 {
				if err := tx.QueryRow(ctx, stmts.rolesVersion).Scan(&roles); err != nil {
					return nil, fmt.Errorf("projections: reading the role catalog version: %w", err)
				}
			}
			if d.rejected = eventstore.RoleCatalogInvariant(roles, d.rolesVersion); d.rejected == "" {
				roles = d.rolesVersion
			}
		default:
			if catalog < 0 {
				if err := tx.QueryRow(ctx, stmts.catalogVersion).Scan(&catalog); err != nil {
					return nil, fmt.Errorf("projections: reading the catalog version: %w", err)
				}
			}
			if d.rejected = eventstore.CatalogInvariant(catalog, d.catalogVersion); d.rejected == "" {
				catalog = d.catalogVersion
			}
		}
		if d.rejected != "" {
			out = append(out, eventstore.Rejection{Sequence: d.seq, Subject: d.subject, Reason: d.rejected})
		}
	}
	return out, nil
}

// orgVersions reads the versions the tables hold for the organizations of
// the organization events of ds (absent: none applied yet, 0).
func orgVersions(ctx context.Context, tx pgx.Tx, stmts *statements, ds []decoded) (map[string]int64, error) {
	var ids []string
	for _, d := range ds {
		if d.rejected == "" && d.org != nil {
			ids = append(ids, d.org.Policy.OrgID)
		}
	}
	orgs := make(map[string]int64, len(ids))
	if len(ids) == 0 {
		return orgs, nil
	}
	rows, err := tx.Query(ctx, stmts.orgVersions, ids)
	if err != nil {
		return nil, fmt.Errorf("projections: reading organization versions: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var v int64
		if err := rows.Scan(&id, &v); err != nil {
			return nil, fmt.Errorf("projections: reading organization versions: %w", err)
		}
		orgs[id] = v
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("projections: reading organization versions: %w", err)
	}
	return orgs, nil
}

// applyRows writes the events of ds not set aside and moves the checkpoint
// to ds's last sequence.
func applyRows(ctx context.Context, tx pgx.Tx, stmts *statements, ds []decoded) (uint64, error) {
	rs, err := buildRows(ds)
	if err != nil {
		return 0, err
	}
	next := ds[len(ds)-1].seq
	b := &pgx.Batch{}
	rs.queue(b, stmts)
	b.Queue(stmts.updateCheckpoint, stmts.checkpoint, int64(next))
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return 0, fmt.Errorf("projections: applying stream sequences %d to %d: %w", ds[0].seq, next, err)
	}
	return next, nil
}

// lockCheckpoint returns the checkpoint of stmts, locked for the rest of the
// transaction, creating it at 0 if missing.
func lockCheckpoint(ctx context.Context, tx pgx.Tx, stmts *statements) (uint64, error) {
	var last int64
	err := tx.QueryRow(ctx, stmts.lockCheckpoint, stmts.checkpoint).Scan(&last)
	if errors.Is(err, pgx.ErrNoRows) {
		if _, err = tx.Exec(ctx, stmts.insertCheckpoint, stmts.checkpoint); err != nil {
			return 0, fmt.Errorf("projections: creating checkpoint %q: %w", stmts.checkpoint, err)
		}
		err = tx.QueryRow(ctx, stmts.lockCheckpoint, stmts.checkpoint).Scan(&last)
	}
	if err != nil {
		return 0, fmt.Errorf("projections: reading checkpoint %q: %w", stmts.checkpoint, err)
	}
	return uint64(last), nil
}

// timestamptz is t as a nullable timestamptz.
func timestamptz(t *time.Time) pgtype.Timestamptz {
	if t == nil {
		return pgtype.Timestamptz{}
	}
	return pgtype.Timestamptz{Time: *t, Valid: true}
}

// metadataJSON encodes metadata as a JSON object ({} when empty).
func metadataJSON(md map[string]string) (string, error) {
	if len(md) == 0 {
		return "{}", nil
	}
	b, err := json.Marshal(md)
	return string(b), err
}

// textArrayLiteral encodes ss as a Postgres text[] literal. unnest flattens
// multi-dimensional arrays, so each row's permissions travel as one text
// value and are cast back to text[] in SQL.
func textArrayLiteral(ss []string) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, s := range ss {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('"')
		for j := 0; j < len(s); j++ {
			if s[j] == '"' || s[j] == '\\' {
				b.WriteByte('\\')
			}
			b.WriteByte(s[j])
		}
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}
