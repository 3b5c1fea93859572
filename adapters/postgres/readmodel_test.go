package postgres

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/internal/testenv"
	"github.com/keyd-dev/keyd/migrations"
)

// clockNow is the fixed time the read model judges expiry by in these tests.
var clockNow = time.Date(2030, 1, 2, 15, 4, 5, 0, time.UTC)

func newReadModel(t *testing.T) (*ReadModel, *pgxpool.Pool) {
	t.Helper()
	ctx := testCtx(t)
	pool, err := Open(ctx, testenv.PostgresURL(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := migrations.Apply(ctx, pool, nil); err != nil {
		t.Fatal(err)
	}
	return NewReadModel(pool, func() time.Time { return clockNow }), pool
}

// newKeyID returns a key id whose ULID carries time at.
func newKeyID(t testing.TB, at time.Time) string {
	id, err := domain.NewULID(at, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return domain.KeyIDPrefix + id
}

type testKey struct {
	id, org, status  string
	perms            []string
	metadata         string // jsonb text
	expires, revoked *time.Time
	lastUsed         *time.Time
}

func insertKey(t testing.TB, pool *pgxpool.Pool, k testKey) {
	t.Helper()
	if err := insertKeyErr(pool, k); err != nil {
		t.Fatal(err)
	}
}

func insertKeyErr(pool *pgxpool.Pool, k testKey) error {
	if k.status == "" {
		k.status = domain.StatusActive
	}
	if k.perms == nil {
		k.perms = []string{}
	}
	if k.metadata == "" {
		k.metadata = "{}"
	}
	_, err := pool.Exec(context.Background(), `INSERT INTO keys
		(key_id, org_id, name, owner_type, owner_id, mask, permissions, status,
		 created_at, expires_at, revoked_at, last_used_at, metadata, version, last_seq)
		VALUES ($1, $2, $3, 'organization', $2, 'sk_…a1B2', $4, $5, $6, $7, $8, $9, $10::jsonb, 1, 1)`,
		k.id, k.org, "name of "+k.id, k.perms, k.status, clockNow.Add(-24*time.Hour),
		k.expires, k.revoked, k.lastUsed, k.metadata)
	return err
}

func ptr(t time.Time) *time.Time { return &t }

func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	if got := domain.ErrorCode(err); got != code {
		t.Fatalf("error %v has code %q, want %q", err, got, code)
	}
}

func ids(keys []domain.KeyView) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k.ID
	}
	return out
}

func TestListKeysFilters(t *testing.T) {
	t.Parallel()
	rm, pool := newReadModel(t)
	ctx := testCtx(t)

	base := clockNow.Add(-time.Hour)
	id := func(i int) string { return newKeyID(t, base.Add(time.Duration(i)*time.Second)) }
	var (
		plain        = id(1)
		future       = id(2)
		expired      = id(3)
		expiresNow   = id(4)
		revoked      = id(5)
		revokedStale = id(6)
		otherOrg     = id(7)
	)
	insertKey(t, pool, testKey{id: plain, org: "org_a", perms: []string{"posts:read"}, metadata: `{"team":"ci"}`})
	insertKey(t, pool, testKey{id: future, org: "org_a", expires: ptr(clockNow.Add(time.Second))})
	insertKey(t, pool, testKey{id: expired, org: "org_a", expires: ptr(clockNow.Add(-time.Minute))})
	insertKey(t, pool, testKey{id: expiresNow, org: "org_a", expires: ptr(clockNow)})
	insertKey(t, pool, testKey{id: revoked, org: "org_a", status: domain.StatusRevoked, revoked: ptr(clockNow.Add(-time.Minute))})
	insertKey(t, pool, testKey{id: revokedStale, org: "org_a", status: domain.StatusRevoked,
		revoked: ptr(clockNow.Add(-time.Hour)), expires: ptr(clockNow.Add(-time.Minute))})
	insertKey(t, pool, testKey{id: otherOrg, org: "org_b"})

	wantStatus := map[string]string{
		plain: "active", future: "active", expired: "expired", expiresNow: "expired",
		revoked: "revoked", revokedStale: "revoked",
	}
	for _, tc := range []struct {
		status string
		want   []string
	}{
		{"", []string{revokedStale, revoked, expiresNow, expired, future, plain}},
		{"all", []string{revokedStale, revoked, expiresNow, expired, future, plain}},
		{"active", []string{future, plain}},
		{"revoked", []string{revokedStale, revoked}},
		{"expired", []string{expiresNow, expired}},
	} {
		t.Run("status="+tc.status, func(t *testing.T) {
			keys, next, err := rm.ListKeys(ctx, "org_a", KeyFilter{Status: tc.status})
			if err != nil {
				t.Fatal(err)
			}
			if next != "" {
				t.Errorf("next = %q on the only page", next)
			}
			if got := ids(keys); !slices.Equal(got, tc.want) {
				t.Fatalf("keys %v, want %v", got, tc.want)
			}
			for _, k := range keys {
				if k.Status != wantStatus[k.ID] {
					t.Errorf("key %s status %q, want %q", k.ID, k.Status, wantStatus[k.ID])
				}
				if k.OrgID != "org_a" {
					t.Errorf("key %s of org %s listed for org_a", k.ID, k.OrgID)
				}
			}
		})
	}

	t.Run("view", func(t *testing.T) {
		keys, _, err := rm.ListKeys(ctx, "org_a", KeyFilter{Status: "active"})
		if err != nil {
			t.Fatal(err)
		}
		p, f := keys[1], keys[0]
		if p.ID != plain || !slices.Equal(p.Permissions, []string{"posts:read"}) || p.Metadata["team"] != "ci" ||
			p.Owner != (domain.Owner{Type: "organization", ID: "org_a"}) || p.Mask != "sk_…a1B2" || p.Version != 1 ||
			p.Name != "name of "+plain || p.ExpiresAt != nil || p.RevokedAt != nil || p.LastUsedAt != nil {
			t.Errorf("view of %s = %+v", plain, p)
		}
		if f.ExpiresAt == nil || !f.ExpiresAt.Equal(clockNow.Add(time.Second)) || f.ExpiresAt.Location() != time.UTC ||
			f.CreatedAt.Location() != time.UTC {
			t.Errorf("times of %s are not the stored ones in UTC: %+v", future, f)
		}
		b, err := json.Marshal(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{`"permissions":[]`, `"metadata":{}`, `"last_used_at":null`, `Z"`} {
			if !bytes.Contains(b, []byte(want)) {
				t.Errorf("JSON %s lacks %s", b, want)
			}
		}
	})

	t.Run("empty org", func(t *testing.T) {
		keys, next, err := rm.ListKeys(ctx, "org_none", KeyFilter{})
		if err != nil || keys == nil || len(keys) != 0 || next != "" {
			t.Fatalf("ListKeys(org_none) = %v, %q, %v; want an empty non-nil page", keys, next, err)
		}
	})
}

func TestListKeysInvalidArguments(t *testing.T) {
	t.Parallel()
	rm, _ := newReadModel(t)
	ctx := testCtx(t)
	for _, tc := range []struct {
		name string
		f    KeyFilter
		msg  string
	}{
		{"status", KeyFilter{Status: "deleted"}, `status must be one of all, active, suspended, revoked or expired, got "deleted"`},
		{"status case", KeyFilter{Status: "Active"}, `got "Active"`},
		{"limit low", KeyFilter{Limit: -1}, "limit must be between 1 and 100, got -1"},
		{"limit high", KeyFilter{Limit: 101}, "limit must be between 1 and 100, got 101"},
		{"cursor not base64", KeyFilter{Cursor: "!!!"}, "cursor is not valid"},
		{"cursor not a key", KeyFilter{Cursor: base64.RawURLEncoding.EncodeToString([]byte("'; DROP TABLE keys; --"))}, "cursor is not valid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := rm.ListKeys(ctx, "org_a", tc.f)
			wantCode(t, err, domain.EInvalid)
			if !strings.Contains(domain.ErrorMessage(err), tc.msg) {
				t.Fatalf("message %q, want it to contain %q", domain.ErrorMessage(err), tc.msg)
			}
		})
	}
	for _, limit := range []int{1, 100} {
		if _, _, err := rm.ListKeys(ctx, "org_a", KeyFilter{Limit: limit}); err != nil {
			t.Errorf("limit %d: %v", limit, err)
		}
	}
}

// insertKeys inserts n keys of org created one millisecond apart from start
// and returns their ids, newest first.
func insertKeys(t testing.TB, pool *pgxpool.Pool, org string, start time.Time, n int) []string {
	out := make([]string, n)
	for i := range n {
		id := newKeyID(t, start.Add(time.Duration(i)*time.Millisecond))
		insertKey(t, pool, testKey{id: id, org: org})
		out[n-1-i] = id
	}
	return out
}

// pageAll lists every key of org with the given page size, calling between
// after each page.
func pageAll(t *testing.T, rm *ReadModel, org string, f KeyFilter, between func()) (all []string, pages []int) {
	t.Helper()
	for {
		keys, next, err := rm.ListKeys(testCtx(t), org, f)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, ids(keys)...)
		pages = append(pages, len(keys))
		if next == "" {
			return all, pages
		}
		if len(pages) > 1000 {
			t.Fatal("paging does not end")
		}
		f.Cursor = next
		if between != nil {
			between()
		}
	}
}

func TestListKeysPaging(t *testing.T) {
	t.Parallel()
	rm, pool := newReadModel(t)
	want := insertKeys(t, pool, "org_a", clockNow.Add(-time.Hour), 23)
	insertKeys(t, pool, "org_b", clockNow.Add(-time.Hour), 3)

	for _, tc := range []struct {
		limit int
		pages []int
	}{
		{5, []int{5, 5, 5, 5, 3}},
		{23, []int{23}},  // exactly one full page: no next cursor
		{1, nil},         // 23 pages of one
		{0, []int{23}},   // default 50
		{100, []int{23}}, // maximum
	} {
		t.Run(fmt.Sprint("limit=", tc.limit), func(t *testing.T) {
			got, pages := pageAll(t, rm, "org_a", KeyFilter{Limit: tc.limit}, nil)
			if !slices.Equal(got, want) {
				t.Fatalf("paged keys %v, want %v", got, want)
			}
			if tc.pages != nil && !slices.Equal(pages, tc.pages) {
				t.Fatalf("page sizes %v, want %v", pages, tc.pages)
			}
		})
	}

	t.Run("cursor with status", func(t *testing.T) {
		got, _ := pageAll(t, rm, "org_a", KeyFilter{Status: "active", Limit: 4}, nil)
		if !slices.Equal(got, want) {
			t.Fatalf("paged active keys %v, want %v", got, want)
		}
	})
}

func TestListKeysPagingStableWhileKeysAreCreated(t *testing.T) {
	t.Parallel()
	rm, pool := newReadModel(t)
	existing := insertKeys(t, pool, "org_a", time.Now().Add(-time.Hour), 40)

	// A writer creates keys the whole time the client pages.
	ctx, stop := context.WithCancel(testCtx(t))
	var created atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		for ctx.Err() == nil {
			id, err := domain.NewULID(time.Now(), rand.Reader)
			if err == nil {
				err = insertKeyErr(pool, testKey{id: domain.KeyIDPrefix + id, org: "org_a"})
			}
			if err != nil && ctx.Err() == nil {
				t.Error(err)
				return
			}
			created.Add(1)
			time.Sleep(time.Millisecond)
		}
	})
	// And some land between every two pages for sure.
	between := func() {
		for range 3 {
			insertKey(t, pool, testKey{id: newKeyID(t, time.Now()), org: "org_a"})
		}
	}
	for created.Load() < 3 && ctx.Err() == nil {
		time.Sleep(time.Millisecond)
	}
	// The first page is taken now; every key older than its first key must
	// follow exactly once.
	first, next, err := rm.ListKeys(ctx, "org_a", KeyFilter{Limit: 7})
	if err != nil {
		t.Fatal(err)
	}
	rest, _ := pageAll(t, rm, "org_a", KeyFilter{Limit: 7, Cursor: next}, between)
	stop()
	wg.Wait()

	all := append(ids(first), rest...)
	seen := map[string]bool{}
	for _, id := range all {
		if seen[id] {
			t.Fatalf("key %s listed twice", id)
		}
		seen[id] = true
	}
	for _, id := range existing {
		if !seen[id] {
			t.Fatalf("pre-existing key %s skipped", id)
		}
	}
	if !slices.IsSortedFunc(all, func(a, b string) int { return strings.Compare(b, a) }) {
		t.Fatal("keys are not newest first across pages")
	}
	if tail := all[len(all)-len(existing):]; !slices.Equal(tail, existing) {
		t.Fatalf("pre-existing keys are not the last %d listed", len(existing))
	}
}

func TestGetKey(t *testing.T) {
	t.Parallel()
	rm, pool := newReadModel(t)
	ctx := testCtx(t)
	a := newKeyID(t, clockNow.Add(-time.Hour))
	insertKey(t, pool, testKey{id: a, org: "org_a", metadata: `{"env":"prod"}`, expires: ptr(clockNow.Add(-time.Second))})

	k, err := rm.GetKey(ctx, "org_a", a)
	if err != nil {
		t.Fatal(err)
	}
	if k.ID != a || k.OrgID != "org_a" || k.Status != domain.StatusExpired || k.Metadata["env"] != "prod" || k.Permissions == nil {
		t.Fatalf("GetKey = %+v", k)
	}

	unknown := newKeyID(t, clockNow)
	for _, tc := range []struct{ org, id string }{
		{"org_b", a}, // another organization's key: not_found, not permission_denied
		{"org_a", unknown},
		{"org_a", "not-a-key-id"},
	} {
		_, err := rm.GetKey(ctx, tc.org, tc.id)
		wantCode(t, err, domain.ENotFound)
		if want := fmt.Sprintf("key %s not found in organization %s", tc.id, tc.org); domain.ErrorMessage(err) != want {
			t.Errorf("message %q, want %q", domain.ErrorMessage(err), want)
		}
	}
}

func insertEvent(t testing.TB, pool *pgxpool.Pool, seq int64, org string) {
	t.Helper()
	keyID := newKeyID(t, clockNow)
	env, err := json.Marshal(domain.Event{
		ID: fmt.Sprintf("evt%d", seq), Type: domain.EventKeyCreated, OrgID: org, KeyID: keyID,
		OccurredAt: clockNow, Actor: domain.Actor{Type: "user", ID: "u1"},
		Data: json.RawMessage(`{"key":{"id":"` + keyID + `"}}`),
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = pool.Exec(context.Background(), `INSERT INTO audit_events (seq, org_id, key_id, event_id, type, occurred_at, envelope)
		VALUES ($1, $2, $3, $4, $5, $6, $7)`, seq, org, keyID, fmt.Sprintf("evt%d", seq), domain.EventKeyCreated, clockNow, env)
	if err != nil {
		t.Fatal(err)
	}
}

func TestListEvents(t *testing.T) {
	t.Parallel()
	rm, pool := newReadModel(t)
	ctx := testCtx(t)
	// org_a has the odd sequences 1..9, org_b the even ones.
	for seq := int64(1); seq <= 10; seq++ {
		insertEvent(t, pool, seq, map[bool]string{true: "org_a", false: "org_b"}[seq%2 == 1])
	}

	var got []uint64
	after := uint64(0)
	var pages []int
	for {
		events, next, err := rm.ListEvents(ctx, "org_a", after, 2)
		if err != nil {
			t.Fatal(err)
		}
		if events == nil {
			t.Fatal("events is nil, want an empty slice")
		}
		pages = append(pages, len(events))
		for _, e := range events {
			var seq uint64
			if _, err := fmt.Sscanf(string(e), `{"sequence":%d,`, &seq); err != nil {
				t.Fatalf("event %s does not start with its sequence: %v", e, err)
			}
			var env struct {
				Sequence uint64          `json:"sequence"`
				ID       string          `json:"id"`
				Type     string          `json:"type"`
				OrgID    string          `json:"org_id"`
				Data     json.RawMessage `json:"data"`
			}
			if err := json.Unmarshal(e, &env); err != nil {
				t.Fatalf("event %s is not JSON: %v", e, err)
			}
			if env.Sequence != seq || env.ID != fmt.Sprintf("evt%d", seq) || env.OrgID != "org_a" ||
				env.Type != domain.EventKeyCreated || len(env.Data) == 0 {
				t.Fatalf("event %s", e)
			}
			got = append(got, seq)
		}
		if len(events) == 0 {
			if next != after {
				t.Fatalf("empty page returned next_after %d, want %d", next, after)
			}
			break
		}
		if next != got[len(got)-1] {
			t.Fatalf("next_after %d, want the last sequence %d", next, got[len(got)-1])
		}
		after = next
	}
	if !slices.Equal(got, []uint64{1, 3, 5, 7, 9}) {
		t.Fatalf("sequences %v, want [1 3 5 7 9]", got)
	}
	if !slices.Equal(pages, []int{2, 2, 1, 0}) {
		t.Fatalf("page sizes %v", pages)
	}

	events, next, err := rm.ListEvents(ctx, "org_b", 0, 0) // default limit
	if err != nil || len(events) != 5 || next != 10 {
		t.Fatalf("ListEvents(org_b, 0, 0) = %d events, %d, %v", len(events), next, err)
	}
	events, next, err = rm.ListEvents(ctx, "org_b", ^uint64(0), 10)
	if err != nil || len(events) != 0 || next != ^uint64(0) {
		t.Fatalf("ListEvents after the largest sequence = %d events, %d, %v", len(events), next, err)
	}
	for _, limit := range []int{-1, 1001} {
		_, _, err := rm.ListEvents(ctx, "org_a", 0, limit)
		wantCode(t, err, domain.EInvalid)
		if want := fmt.Sprintf("limit must be between 1 and 1000, got %d", limit); domain.ErrorMessage(err) != want {
			t.Errorf("message %q, want %q", domain.ErrorMessage(err), want)
		}
	}
	if _, _, err := rm.ListEvents(ctx, "org_a", 0, 1000); err != nil {
		t.Fatal(err)
	}
}

func TestWithSequence(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		`{"id": "x"}`:  `{"sequence":7,"id": "x"}`,
		` { "a": 1 } `: `{"sequence":7,"a": 1 }`,
		`{}`:           `{"sequence":7}`,
		`{ }`:          `{"sequence":7}`,
	} {
		got, err := withSequence(7, []byte(in))
		if err != nil || string(got) != want || !json.Valid(got) {
			t.Errorf("withSequence(%s) = %s, %v; want %s", in, got, err, want)
		}
	}
	for _, in := range []string{``, `[]`, `"x"`, `null`} {
		if _, err := withSequence(7, []byte(in)); err == nil {
			t.Errorf("withSequence(%s) succeeded", in)
		}
	}
}

func perm(slug, description, status string) domain.Permission {
	return domain.Permission{Slug: slug, Description: description, Status: status}
}

func TestListPermissions(t *testing.T) {
	t.Parallel()
	rm, pool := newReadModel(t)
	ctx := testCtx(t)

	perms, err := rm.ListPermissions(ctx)
	if err != nil || perms == nil || len(perms) != 0 {
		t.Fatalf("empty catalog = %v, %v; want an empty non-nil list", perms, err)
	}
	// Byte order, whatever the database's collation: '-' < '.' < ':' < '_'.
	for i, p := range []domain.Permission{
		perm("posts_read", "underscore", domain.PermissionActive),
		perm("posts:read", "colon", domain.PermissionRetired),
		perm("posts.read", "dot", domain.PermissionActive),
		perm("posts-read", "dash", domain.PermissionActive),
		perm("admin", "admin", domain.PermissionActive),
	} {
		if _, err := pool.Exec(ctx, "INSERT INTO permissions (slug, description, status, last_seq) VALUES ($1, $2, $3, $4)",
			p.Slug, p.Description, p.Status, i+1); err != nil {
			t.Fatal(err)
		}
	}
	perms, err = rm.ListPermissions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []domain.Permission{
		perm("admin", "admin", "active"),
		perm("posts-read", "dash", "active"),
		perm("posts.read", "dot", "active"),
		perm("posts:read", "colon", "retired"),
		perm("posts_read", "underscore", "active"),
	}
	if !slices.Equal(perms, want) {
		t.Fatalf("ListPermissions = %v, want %v", perms, want)
	}
}

func setCheckpoint(t testing.TB, pool *pgxpool.Pool, seq int64) {
	t.Helper()
	_, err := pool.Exec(context.Background(), `INSERT INTO projection_checkpoints (name, last_seq) VALUES ($1, $2)
		ON CONFLICT (name) DO UPDATE SET last_seq = excluded.last_seq, updated_at = now()`, migrations.ReadModelsProjection, seq)
	if err != nil {
		t.Error(err)
	}
}

func TestAppliedSequenceAndWait(t *testing.T) {
	t.Parallel()
	rm, pool := newReadModel(t)
	ctx := testCtx(t)

	if seq, err := rm.AppliedSequence(ctx); err != nil || seq != 0 {
		t.Fatalf("AppliedSequence without a checkpoint = %d, %v; want 0", seq, err)
	}
	if applied, err := rm.WaitForSequence(ctx, 0, 0); err != nil || applied != 0 {
		t.Fatalf("WaitForSequence(0) = %d, %v", applied, err)
	}
	setCheckpoint(t, pool, 5)
	if seq, err := rm.AppliedSequence(ctx); err != nil || seq != 5 {
		t.Fatalf("AppliedSequence = %d, %v; want 5", seq, err)
	}

	t.Run("already applied", func(t *testing.T) {
		applied, err := rm.WaitForSequence(ctx, 3, 5*time.Second)
		if err != nil || applied != 5 {
			t.Fatalf("WaitForSequence(3) = %d, %v; want 5", applied, err)
		}
	})

	t.Run("applied meanwhile", func(t *testing.T) {
		go func() {
			time.Sleep(50 * time.Millisecond)
			setCheckpoint(t, pool, 12)
		}()
		start := time.Now()
		applied, err := rm.WaitForSequence(ctx, 10, 5*time.Second)
		if err != nil || applied != 12 {
			t.Fatalf("WaitForSequence(10) = %d, %v; want 12", applied, err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("WaitForSequence returned %v after the checkpoint moved", d)
		}
	})

	t.Run("timeout", func(t *testing.T) {
		start := time.Now()
		applied, err := rm.WaitForSequence(ctx, 100, 80*time.Millisecond)
		wantCode(t, err, domain.EUnavailable)
		if want := "read model has applied sequence 12, not yet 100; retry"; domain.ErrorMessage(err) != want {
			t.Fatalf("message %q, want %q", domain.ErrorMessage(err), want)
		}
		if applied != 12 {
			t.Fatalf("applied = %d, want 12", applied)
		}
		if d := time.Since(start); d < 80*time.Millisecond || d > 2*time.Second {
			t.Fatalf("timed out after %v, want about 80ms", d)
		}
	})

	t.Run("context ends", func(t *testing.T) {
		short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := rm.WaitForSequence(short, 100, 5*time.Second)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want context.DeadlineExceeded", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("returned %v after the context ended", d)
		}
	})
}

// TestGetKeyLastUsed: the last use verifiers write (verifier.WriteLastUsed,
// tested there) reads back in UTC.
func TestGetKeyLastUsed(t *testing.T) {
	t.Parallel()
	rm, pool := newReadModel(t)
	ctx := testCtx(t)
	at := clockNow.Add(-time.Hour).In(time.FixedZone("east", 3*3600))
	id := newKeyID(t, at)
	insertKey(t, pool, testKey{id: id, org: "org_a", lastUsed: &at})
	k, err := rm.GetKey(ctx, "org_a", id)
	if err != nil || k.LastUsedAt == nil || !k.LastUsedAt.Equal(at) || k.LastUsedAt.Location() != time.UTC {
		t.Fatalf("GetKey last_used_at = %v, %v", k.LastUsedAt, err)
	}
}
