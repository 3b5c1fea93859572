package domain_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/eventstore"
	"github.com/keyd-dev/keyd/internal/testenv"
)

// ---- test doubles ----------------------------------------------------------

// testClock is an injected clock the test advances.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// recStore wraps the memory store: it counts Append calls, keeps every
// stored message by sequence (to scan all of them), and can run a hook before
// an append or pretend a landed append's reply was lost.
type recStore struct {
	inner *eventstore.Memory

	mu     sync.Mutex
	calls  int
	stored map[uint64][]byte
	// before runs before the n-th (1-based) Append call reaches the store.
	before func(n int)
	// lostReply, if it returns true for the n-th call, makes a landed append
	// answer ErrConflict, as a JetStream store retrying a publish whose ack
	// was lost does on a single server.
	lostReply func(n int) bool
	// unknownOutcome, if it returns true for the n-th call, makes a landed
	// append answer a non-conflict error (the store gave up waiting).
	unknownOutcome func(n int) bool
}

func (s *recStore) Append(ctx context.Context, msgs ...domain.AppendMsg) (uint64, error) {
	s.mu.Lock()
	s.calls++
	n, before, lost, unknown := s.calls, s.before, s.lostReply, s.unknownOutcome
	s.mu.Unlock()
	if before != nil {
		before(n)
	}
	seq, err := s.inner.Append(ctx, msgs...)
	if err == nil {
		s.mu.Lock()
		for i, m := range msgs {
			s.stored[seq-uint64(len(msgs)-1-i)] = m.Data
		}
		s.mu.Unlock()
		if lost != nil && lost(n) {
			return 0, fmt.Errorf("%w (publish retried after a lost ack)", domain.ErrConflict)
		}
		if unknown != nil && unknown(n) {
			return 0, errors.New("eventstore: unavailable: no ack after 3 attempts")
		}
	}
	return seq, err
}

func (s *recStore) Next(ctx context.Context, subject string, after uint64) (domain.Record, bool, error) {
	return s.inner.Next(ctx, subject, after)
}

func (s *recStore) Last(ctx context.Context, subject string) (domain.Record, bool, error) {
	return s.inner.Last(ctx, subject)
}

func (s *recStore) Calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// ---- environment -----------------------------------------------------------

var t0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

type env struct {
	t     *testing.T
	ctx   context.Context
	clk   *testClock
	mem   *eventstore.Memory
	idem  *eventstore.MemoryIdempotency
	store *recStore
	svc   *domain.Service
	// other writes to the same store, bypassing the wrapper's hooks.
	other *domain.Service
}

var deploymentSecret = []byte("test deployment secret")

func newEnv(t *testing.T) *env {
	t.Helper()
	clk := &testClock{t: t0}
	mem := eventstore.NewMemory()
	store := &recStore{inner: mem, stored: map[uint64][]byte{}}
	idem := eventstore.NewMemoryIdempotency()
	dig := domain.NewDigester(deploymentSecret)
	rnd := testenv.LockedRand(1)
	return &env{
		t: t, ctx: t.Context(), clk: clk, mem: mem, idem: idem, store: store,
		svc:   &domain.Service{Store: store, Idempotency: idem, Digester: dig, Now: clk.Now, Rand: rnd},
		other: &domain.Service{Store: mem, Idempotency: idem, Digester: dig, Now: clk.Now, Rand: testenv.LockedRand(2)},
	}
}

// on returns e for subtest t: the same service, store and clock, with t's
// failures reported on t.
func (e *env) on(t *testing.T) *env {
	c := *e
	c.t, c.ctx = t, t.Context()
	return &c
}

func (e *env) lastSeq() uint64 {
	e.t.Helper()
	n, err := e.mem.LastSequence(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	return n
}

func (e *env) define(slugs ...string) {
	e.t.Helper()
	for _, s := range slugs {
		if _, err := e.svc.DefinePermission(e.ctx, domain.DefinePermission{Slug: s, Description: "perm " + s}); err != nil {
			e.t.Fatalf("define %s: %v", s, err)
		}
	}
}

func (e *env) create(org string, cmd domain.CreateKey) domain.CreateKeyResult {
	e.t.Helper()
	if cmd.Name == "" {
		cmd.Name = "test key"
	}
	res, err := e.svc.CreateKey(e.ctx, org, cmd)
	if err != nil {
		e.t.Fatalf("create: %v", err)
	}
	return res
}

func (e *env) load(org, id string) domain.KeyState {
	e.t.Helper()
	k, _, err := e.svc.LoadKey(e.ctx, org, id)
	if err != nil {
		e.t.Fatalf("load %s: %v", id, err)
	}
	return k
}

// lastEvent returns the newest event on a key's subject.
func (e *env) lastEvent(org, id string) (domain.Event, uint64) {
	e.t.Helper()
	rec, ok, err := e.mem.Last(e.ctx, domain.KeySubject(org, id))
	if err != nil || !ok {
		e.t.Fatalf("no event for %s: %v", id, err)
	}
	ev, err := domain.DecodeEvent(rec.Data)
	if err != nil {
		e.t.Fatal(err)
	}
	return ev, rec.Sequence
}

// wantErr checks err's code and that its message mentions each string.
func wantErr(t *testing.T, err error, code string, mention ...string) {
	t.Helper()
	if got := domain.ErrorCode(err); got != code {
		t.Fatalf("error = %v, want code %q", err, code)
	}
	var de *domain.Error
	if !errors.As(err, &de) {
		t.Fatalf("error %T is not a *domain.Error", err)
	}
	for _, m := range mention {
		if !strings.Contains(de.Message, m) {
			t.Errorf("message %q does not mention %s", de.Message, m)
		}
	}
}

func ptr[T any](v T) *T { return &v }

func digestHex(secret string) string {
	d := domain.NewDigester(deploymentSecret).Digest(secret)
	return hex.EncodeToString(d[:])
}

// ---- create ----------------------------------------------------------------

func TestCreateKeyValidation(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.define("posts:read", "old")
	if _, err := e.svc.RetirePermission(e.ctx, domain.RetirePermission{Slug: "old"}); err != nil {
		t.Fatal(err)
	}
	many := map[string]string{}
	for i := range 33 {
		many[fmt.Sprint(i)] = "v"
	}
	tests := []struct {
		name    string
		org     string
		cmd     domain.CreateKey
		code    string
		mention []string
	}{
		{"ok", "org_1", domain.CreateKey{Name: "n", Permissions: []string{"posts:read"}}, "", nil},
		{"ok expiring a millisecond from now", "org_1", domain.CreateKey{Name: "n", ExpiresAt: ptr(t0.Add(time.Millisecond))}, "", nil},
		{"empty org", "", domain.CreateKey{Name: "n"}, domain.EInvalid, []string{"organization id"}},
		{"org with dot", "org.1", domain.CreateKey{Name: "n"}, domain.EInvalid, []string{`"org.1"`}},
		{"org of 65", strings.Repeat("o", 65), domain.CreateKey{Name: "n"}, domain.EInvalid, []string{"organization id"}},
		{"no name", "org_1", domain.CreateKey{}, domain.EInvalid, []string{"name"}},
		{"name of 201", "org_1", domain.CreateKey{Name: strings.Repeat("n", 201)}, domain.EInvalid, []string{"name", "201"}},
		{"33 metadata entries", "org_1", domain.CreateKey{Name: "n", Metadata: many}, domain.EInvalid, []string{"metadata"}},
		{"expires in the past", "org_1", domain.CreateKey{Name: "n", ExpiresAt: ptr(t0.Add(-time.Hour))}, domain.EInvalid, []string{"expires_at"}},
		{"expires now", "org_1", domain.CreateKey{Name: "n", ExpiresAt: ptr(t0)}, domain.EInvalid, []string{"expires_at"}},
		{"expires within this millisecond", "org_1", domain.CreateKey{Name: "n", ExpiresAt: ptr(t0.Add(time.Microsecond))}, domain.EInvalid, []string{"expires_at"}},
		{"undefined permission", "org_1", domain.CreateKey{Name: "n", Permissions: []string{"posts:read", "posts:delete"}}, domain.EInvalid, []string{`"posts:delete"`, "not defined"}},
		{"retired permission", "org_1", domain.CreateKey{Name: "n", Permissions: []string{"old"}}, domain.EInvalid, []string{`"old"`, "retired"}},
		{"malformed permission", "org_1", domain.CreateKey{Name: "n", Permissions: []string{"Posts"}}, domain.EInvalid, []string{`"Posts"`}},
		{"bad actor", "org_1", domain.CreateKey{Name: "n", Meta: domain.Meta{Actor: &domain.Actor{Type: "root", ID: "x"}}}, domain.EInvalid, []string{"actor.type"}},
		{"long idempotency key", "org_1", domain.CreateKey{Name: "n", IdempotencyKey: strings.Repeat("i", 201)}, domain.EInvalid, []string{"idempotency_key"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := e.lastSeq()
			res, err := e.svc.CreateKey(e.ctx, tt.org, tt.cmd)
			if tt.code == "" {
				if err != nil {
					t.Fatal(err)
				}
				if got, want := e.lastSeq(), before+1; got != want || res.Sequence != want {
					t.Errorf("sequence %d (reply %d), want %d", got, res.Sequence, want)
				}
				return
			}
			wantErr(t, err, tt.code, tt.mention...)
			if got := e.lastSeq(); got != before {
				t.Errorf("a rejected create appended: sequence %d → %d", before, got)
			}
		})
	}
}

func TestCreateKeyReply(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.define("posts:read", "posts:write")
	exp := t0.Add(48 * time.Hour)
	res, err := e.svc.CreateKey(e.ctx, "org_123", domain.CreateKey{
		Name: "CI deploy", Permissions: []string{"posts:write", "posts:read", "posts:read"},
		ExpiresAt: ptr(exp.In(time.FixedZone("CET", 3600))), Metadata: map[string]string{"team": "ops"},
		Meta: domain.Meta{Actor: &domain.Actor{Type: "user", ID: "u_1"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	k := res.Key
	if !domain.ValidSecret(res.Secret) || domain.SecretPrefix(res.Secret) != domain.DefaultPrefix {
		t.Errorf("secret %q is not a valid %s_ secret", res.Secret, domain.DefaultPrefix)
	}
	checks := []struct {
		field     string
		got, want any
	}{
		{"id valid", domain.ValidKeyID(k.ID), true},
		{"org_id", k.OrgID, "org_123"},
		{"name", k.Name, "CI deploy"},
		{"owner", k.Owner, domain.Owner{Type: "organization", ID: "org_123"}},
		{"mask", k.Mask, domain.Mask(res.Secret)},
		{"mask shape", k.Mask, "sk_…" + res.Secret[len(res.Secret)-4:]},
		{"permissions", k.Permissions, []string{"posts:read", "posts:write"}},
		{"status", k.Status, domain.StatusActive},
		{"created_at", k.CreatedAt, t0},
		{"expires_at", *k.ExpiresAt, exp},
		{"revoked_at", k.RevokedAt, (*time.Time)(nil)},
		{"last_used_at", k.LastUsedAt, (*time.Time)(nil)},
		{"metadata", k.Metadata, map[string]string{"team": "ops"}},
		{"version", k.Version, int64(1)},
		{"sequence", res.Sequence, e.lastSeq()},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s = %v, want %v", c.field, c.got, c.want)
		}
	}

	// The JSON shapes of the contract.
	b, _ := json.Marshal(res)
	var reply map[string]json.RawMessage
	if err := json.Unmarshal(b, &reply); err != nil {
		t.Fatal(err)
	}
	if got, want := slices.Sorted(mapKeys(reply)), []string{"key", "secret", "sequence"}; !slices.Equal(got, want) {
		t.Errorf("reply keys = %q, want %q", got, want)
	}
	var view map[string]any
	if err := json.Unmarshal(reply["key"], &view); err != nil {
		t.Fatal(err)
	}
	wantKeys := []string{"created_at", "expires_at", "id", "last_used_at", "mask", "metadata", "name", "org_id", "owner", "permissions", "resources", "revoked_at", "roles", "status", "version"}
	if got := slices.Sorted(mapKeys(view)); !slices.Equal(got, wantKeys) {
		t.Errorf("KeyView keys = %q, want %q", got, wantKeys)
	}
	for _, f := range []string{"created_at", "expires_at"} {
		s, _ := view[f].(string)
		if _, err := time.Parse(time.RFC3339, s); err != nil || !strings.HasSuffix(s, "Z") {
			t.Errorf("%s = %q, want RFC 3339 in UTC (Z)", f, s)
		}
	}
	if view["revoked_at"] != nil || view["last_used_at"] != nil {
		t.Errorf("revoked_at/last_used_at = %v/%v, want null", view["revoked_at"], view["last_used_at"])
	}
	if owner, _ := view["owner"].(map[string]any); owner["type"] != "organization" || owner["id"] != "org_123" {
		t.Errorf("owner = %v", view["owner"])
	}
	if strings.Contains(string(reply["key"]), res.Secret) {
		t.Errorf("KeyView contains the secret")
	}

	// The stored event: the full state with the digest, the actor, no secret.
	ev, seq := e.lastEvent("org_123", k.ID)
	st, err := ev.KeyState()
	if err != nil {
		t.Fatal(err)
	}
	if ev.Type != domain.EventKeyCreated || e.mem.Type(seq) != domain.EventKeyCreated {
		t.Errorf("event type %q (stored as %q), want key.created", ev.Type, e.mem.Type(seq))
	}
	if ev.OrgID != "org_123" || ev.KeyID != k.ID || !ev.OccurredAt.Equal(t0) || ev.Actor != (domain.Actor{Type: "user", ID: "u_1"}) {
		t.Errorf("envelope = %+v", ev)
	}
	if st.Digest != digestHex(res.Secret) {
		t.Errorf("stored digest %s, want the HMAC of the secret", st.Digest)
	}
	if got := st.View(t0, nil); !reflect.DeepEqual(got, k) {
		t.Errorf("stored state views as %+v, reply was %+v", got, k)
	}
}

func TestCreateKeyPrefix(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.svc.Prefix = "my_app"
	res := e.create("o", domain.CreateKey{})
	if got := domain.SecretPrefix(res.Secret); got != "my_app" || !domain.ValidSecret(res.Secret) {
		t.Errorf("secret %q, want a valid my_app_ secret", res.Secret)
	}
	if !strings.HasPrefix(res.Key.Mask, "my_app_…") {
		t.Errorf("mask %q", res.Key.Mask)
	}
	e.svc.Prefix = "bad-prefix"
	_, err := e.svc.CreateKey(e.ctx, "o", domain.CreateKey{Name: "n"})
	wantErr(t, err, domain.EInvalid, "prefix")
}

func TestSecretNeverStored(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.define("a", "b")
	var secrets []string
	r1 := e.create("org", domain.CreateKey{Permissions: []string{"a"}, Metadata: map[string]string{"m": "1"}, IdempotencyKey: "idem"})
	secrets = append(secrets, r1.Secret)
	if _, err := e.svc.UpdateKey(e.ctx, "org", domain.UpdateKey{KeyID: r1.Key.ID, Name: ptr("renamed")}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.SetPermissions(e.ctx, "org", domain.SetPermissions{KeyID: r1.Key.ID, Permissions: []string{"a", "b"}}); err != nil {
		t.Fatal(err)
	}
	rot, err := e.svc.RotateKey(e.ctx, "org", domain.RotateKey{KeyID: r1.Key.ID, GracePeriodSeconds: ptr(int64(60))})
	if err != nil {
		t.Fatal(err)
	}
	secrets = append(secrets, rot.Secret)
	if _, err := e.svc.RevokeKey(e.ctx, "org", domain.RevokeKey{KeyID: rot.Key.ID, Reason: "done"}); err != nil {
		t.Fatal(err)
	}
	e.store.lostReply = func(int) bool { return true }
	r2 := e.create("org", domain.CreateKey{})
	secrets = append(secrets, r2.Secret)

	// Every record the store holds was seen by the wrapper.
	if got, want := uint64(len(e.store.stored)), e.lastSeq(); got != want {
		t.Fatalf("scanned %d records, the store holds %d", got, want)
	}
	for seq, data := range e.store.stored {
		for _, s := range secrets {
			body := s[len(domain.SecretPrefix(s))+1:]
			for _, needle := range []string{s, body, body[:20], body[20:]} {
				if strings.Contains(string(data), needle) {
					t.Errorf("record %d contains (part of) a secret: %s", seq, data)
				}
			}
		}
	}
}

// TestIdempotencyKey runs its steps in order on one service: each builds on
// the keys and the clock the steps before it left.
func TestIdempotencyKey(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	var first domain.CreateKeyResult
	t.Run("first create has a secret", func(t *testing.T) {
		e := env.on(t)
		first = e.create("org", domain.CreateKey{Name: "first", IdempotencyKey: "req-1"})
		if first.Secret == "" {
			t.Fatal("first create has no secret")
		}
	})
	t.Run("repeat returns the first key without a secret and appends nothing", func(t *testing.T) {
		e := env.on(t)
		calls, seq := e.store.Calls(), e.lastSeq()
		e.clk.Advance(time.Hour)
		again := e.create("org", domain.CreateKey{Name: "second", IdempotencyKey: "req-1"})
		if again.Key.ID != first.Key.ID || again.Secret != "" || again.Key.Name != "first" || again.Sequence != first.Sequence {
			t.Errorf("repeat create = %+v (secret %q), want key %s without a secret at sequence %d", again.Key, again.Secret, first.Key.ID, first.Sequence)
		}
		if b, _ := json.Marshal(again); strings.Contains(string(b), `"secret"`) {
			t.Errorf("repeat reply %s carries a secret field", b)
		}
		if e.store.Calls() != calls || e.lastSeq() != seq {
			t.Errorf("repeat create appended (calls %d → %d, sequence %d → %d)", calls, e.store.Calls(), seq, e.lastSeq())
		}
	})
	t.Run("scoped to the organization; another key is another create", func(t *testing.T) {
		e := env.on(t)
		other := e.create("org2", domain.CreateKey{IdempotencyKey: "req-1"})
		if other.Key.ID == first.Key.ID || other.Secret == "" {
			t.Errorf("same idempotency key in another org did not create a key")
		}
		diff := e.create("org", domain.CreateKey{IdempotencyKey: "req-2"})
		if diff.Key.ID == first.Key.ID || diff.Secret == "" {
			t.Errorf("another idempotency key did not create a key")
		}
		none1, none2 := e.create("org", domain.CreateKey{}), e.create("org", domain.CreateKey{})
		if none1.Key.ID == none2.Key.ID {
			t.Errorf("creates without idempotency key gave the same key")
		}
	})
	t.Run("a failed create does not use up the idempotency key", func(t *testing.T) {
		e := env.on(t)
		if _, err := e.svc.CreateKey(e.ctx, "org", domain.CreateKey{Name: "x", Permissions: []string{"nope"}, IdempotencyKey: "req-3"}); err == nil {
			t.Fatal("create with an undefined permission succeeded")
		}
		if r := e.create("org", domain.CreateKey{IdempotencyKey: "req-3"}); r.Secret == "" {
			t.Errorf("idempotency key of a failed create was used up")
		}
	})
	t.Run("after the window, a new key", func(t *testing.T) {
		e := env.on(t)
		e.clk.Advance(24 * time.Hour)
		later := e.create("org", domain.CreateKey{Name: "later", IdempotencyKey: "req-1"})
		if later.Key.ID == first.Key.ID || later.Secret == "" || later.Key.Name != "later" {
			t.Errorf("create after 25h = %+v, want a new key with a secret", later.Key)
		}
	})
	t.Run("a reservation whose key never appeared is taken over at once", func(t *testing.T) {
		// Issue 11 P3: the reservation's create never landed (its process
		// crashed between reserving and appending). A resend must not wait
		// for the reservation to go stale: it creates the reserved key.
		e := env.on(t)
		ghost := "key_01J0000000000000000000000Z"
		if _, ok, err := e.idem.Reserve(e.ctx, "org", "crashed", ghost, e.clk.Now()); err != nil || !ok {
			t.Fatalf("reserve: %v %v", ok, err)
		}
		e.clk.Advance(time.Second)
		taken := e.create("org", domain.CreateKey{Name: "n", IdempotencyKey: "crashed"})
		if taken.Key.ID != ghost || taken.Secret == "" {
			t.Errorf("resend = %s (secret %t), want the reserved key %s with its secret", taken.Key.ID, taken.Secret != "", ghost)
		}
		if again := e.create("org", domain.CreateKey{IdempotencyKey: "crashed"}); again.Key.ID != taken.Key.ID || again.Secret != "" {
			t.Errorf("repeat after take-over = %s, want %s without secret", again.Key.ID, taken.Key.ID)
		}
	})
	t.Run("the first create landing after a take-over answers the taker's key", func(t *testing.T) {
		// The first attempt was only slow: it appends after a resend took
		// its reservation over. Exactly one key; the late first attempt
		// answers it without a secret (it is not the secret it made).
		e := env.on(t)
		slow := &stallingIdempotency{IdempotencyStore: e.idem, reserved: make(chan struct{}), resume: make(chan struct{})}
		first := &domain.Service{Store: e.mem, Idempotency: slow, Digester: e.svc.Digester, Now: e.clk.Now, Rand: testenv.LockedRand(3)}
		type out struct {
			res domain.CreateKeyResult
			err error
		}
		done := make(chan out, 1)
		go func() {
			res, err := first.CreateKey(e.ctx, "org", domain.CreateKey{Name: "first", IdempotencyKey: "race"})
			done <- out{res, err}
		}()
		<-slow.reserved
		taken := e.create("org", domain.CreateKey{Name: "resend", IdempotencyKey: "race"})
		close(slow.resume)
		late := <-done
		if late.err != nil {
			t.Fatal(late.err)
		}
		if late.res.Key.ID != taken.Key.ID || late.res.Secret != "" || taken.Secret == "" {
			t.Errorf("late first attempt = %s (secret %t), resend = %s (secret %t): want one key, the secret only in the resend's reply",
				late.res.Key.ID, late.res.Secret != "", taken.Key.ID, taken.Secret != "")
		}
		if late.res.Key.Name != "resend" {
			t.Errorf("the key is %q, want the resend's (it landed first)", late.res.Key.Name)
		}
	})
	t.Run("without an idempotency store, idempotency keys are unavailable", func(t *testing.T) {
		e := env.on(t)
		e.svc.Idempotency = nil
		_, err := e.svc.CreateKey(e.ctx, "org", domain.CreateKey{Name: "n", IdempotencyKey: "req-9"})
		wantErr(t, err, domain.EUnavailable, "idempotency")
	})
}

// ---- revoke ----------------------------------------------------------------

func TestRevokeKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	k := e.create("org", domain.CreateKey{}).Key
	e.clk.Advance(time.Minute)
	res, err := e.svc.RevokeKey(e.ctx, "org", domain.RevokeKey{KeyID: k.ID, Reason: "leaked", Meta: domain.Meta{Actor: &domain.Actor{Type: "service", ID: "ci"}}})
	if err != nil {
		t.Fatal(err)
	}
	now := t0.Add(time.Minute)
	if res.Key.Status != domain.StatusRevoked || res.Key.RevokedAt == nil || !res.Key.RevokedAt.Equal(now) || res.Key.Version != 2 || res.Sequence != e.lastSeq() {
		t.Errorf("revoke reply = %+v seq %d", res.Key, res.Sequence)
	}
	ev, _ := e.lastEvent("org", k.ID)
	var d domain.KeyRevokedData
	_ = json.Unmarshal(ev.Data, &d)
	if ev.Type != domain.EventKeyRevoked || d.Reason != "leaked" || d.Key.RevokeReason != "leaked" || ev.Actor.ID != "ci" {
		t.Errorf("revoke event = %s %s", ev.Type, ev.Data)
	}

	calls, seq := e.store.Calls(), e.lastSeq()
	e.clk.Advance(time.Minute)
	again, err := e.svc.RevokeKey(e.ctx, "org", domain.RevokeKey{KeyID: k.ID, Reason: "again"})
	if err != nil {
		t.Fatal(err)
	}
	if again.Sequence != res.Sequence || again.Key.Version != 2 || !again.Key.RevokedAt.Equal(now) || again.Key.Status != domain.StatusRevoked {
		t.Errorf("second revoke = %+v seq %d, want the key as it is at sequence %d", again.Key, again.Sequence, res.Sequence)
	}
	if e.store.Calls() != calls || e.lastSeq() != seq {
		t.Errorf("second revoke appended")
	}

	_, err = e.svc.RevokeKey(e.ctx, "org", domain.RevokeKey{KeyID: k.ID, Reason: strings.Repeat("r", 501)})
	wantErr(t, err, domain.EInvalid, "reason")

	// An expired key can still be revoked.
	x := e.create("org", domain.CreateKey{ExpiresAt: ptr(e.clk.Now().Add(time.Second))}).Key
	e.clk.Advance(time.Hour)
	if r, err := e.svc.RevokeKey(e.ctx, "org", domain.RevokeKey{KeyID: x.ID}); err != nil || r.Key.Status != domain.StatusRevoked {
		t.Errorf("revoke of an expired key = %+v, %v", r.Key, err)
	}
}

// ---- set_permissions -------------------------------------------------------

func TestSetPermissions(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.define("a", "b", "c")
	k := e.create("org", domain.CreateKey{Permissions: []string{"a"}}).Key

	res, err := e.svc.SetPermissions(e.ctx, "org", domain.SetPermissions{KeyID: k.ID, Permissions: []string{"c", "a", "c"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(res.Key.Permissions, ","); got != "a,c" || res.Key.Version != 2 || res.Sequence != e.lastSeq() {
		t.Errorf("set_permissions = %v v%d seq %d", res.Key.Permissions, res.Key.Version, res.Sequence)
	}
	ev, _ := e.lastEvent("org", k.ID)
	var d domain.KeyPermissionsChangedData
	_ = json.Unmarshal(ev.Data, &d)
	if ev.Type != domain.EventKeyPermissionsChanged || !slices.Equal(d.Previous, []string{"a"}) || !slices.Equal(d.Permissions, []string{"a", "c"}) {
		t.Errorf("event %s %s", ev.Type, ev.Data)
	}

	// Equal set: nothing appended, same sequence.
	calls, seq := e.store.Calls(), e.lastSeq()
	same, err := e.svc.SetPermissions(e.ctx, "org", domain.SetPermissions{KeyID: k.ID, Permissions: []string{"c", "a"}})
	if err != nil || same.Sequence != seq || same.Key.Version != 2 || e.store.Calls() != calls {
		t.Errorf("no-op set_permissions = %+v seq %d, %v; calls %d → %d", same.Key, same.Sequence, err, calls, e.store.Calls())
	}

	tests := []struct {
		name    string
		cmd     domain.SetPermissions
		code    string
		mention []string
	}{
		{"undefined", domain.SetPermissions{Permissions: []string{"a", "zzz"}}, domain.EInvalid, []string{`"zzz"`}},
		{"missing permissions", domain.SetPermissions{}, domain.EInvalid, []string{"permissions"}},
		{"expected version mismatch", domain.SetPermissions{Permissions: []string{"b"}, ExpectedVersion: ptr(int64(1))}, domain.EConflict, []string{"version 2", "expected version 1"}},
		{"expected version ahead", domain.SetPermissions{Permissions: []string{"b"}, ExpectedVersion: ptr(int64(3))}, domain.EConflict, []string{"version"}},
		{"bad key id", domain.SetPermissions{KeyID: "nope", Permissions: []string{"a"}}, domain.EInvalid, []string{`"nope"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.cmd.KeyID == "" {
				tt.cmd.KeyID = k.ID
			}
			calls, seq := e.store.Calls(), e.lastSeq()
			_, err := e.svc.SetPermissions(e.ctx, "org", tt.cmd)
			wantErr(t, err, tt.code, tt.mention...)
			if e.store.Calls() != calls || e.lastSeq() != seq {
				t.Errorf("rejected set_permissions tried to append (%d calls)", e.store.Calls()-calls)
			}
		})
	}

	ok, err := e.svc.SetPermissions(e.ctx, "org", domain.SetPermissions{KeyID: k.ID, Permissions: []string{}, ExpectedVersion: ptr(int64(2))})
	if err != nil || len(ok.Key.Permissions) != 0 || ok.Key.Version != 3 {
		t.Errorf("set_permissions [] at the expected version = %+v, %v", ok.Key, err)
	}
	if b, _ := json.Marshal(ok.Key); !strings.Contains(string(b), `"permissions":[]`) {
		t.Errorf("no permissions marshal as %s, want []", b)
	}

	// Revoked or expired keys cannot change.
	if _, err := e.svc.RevokeKey(e.ctx, "org", domain.RevokeKey{KeyID: k.ID}); err != nil {
		t.Fatal(err)
	}
	_, err = e.svc.SetPermissions(e.ctx, "org", domain.SetPermissions{KeyID: k.ID, Permissions: []string{"a"}})
	wantErr(t, err, domain.EPrecondition, "revoked")
	x := e.create("org", domain.CreateKey{ExpiresAt: ptr(e.clk.Now().Add(time.Minute))}).Key
	e.clk.Advance(time.Minute)
	_, err = e.svc.SetPermissions(e.ctx, "org", domain.SetPermissions{KeyID: x.ID, Permissions: []string{"a"}})
	wantErr(t, err, domain.EPrecondition, "expired")
}

// A concurrent write between load and append: with expected_version the
// command is conflict after one append attempt; without, it is retried.
func TestSetPermissionsConcurrentWrite(t *testing.T) {
	t.Parallel()
	for _, withVersion := range []bool{true, false} {
		t.Run(fmt.Sprint("expected_version=", withVersion), func(t *testing.T) {
			e := newEnv(t)
			e.define("a", "b")
			k := e.create("org", domain.CreateKey{Permissions: []string{"a"}}).Key
			start := e.store.Calls()
			e.store.before = func(n int) {
				if n == start+1 {
					if _, err := e.other.UpdateKey(e.ctx, "org", domain.UpdateKey{KeyID: k.ID, Name: ptr("raced")}); err != nil {
						t.Errorf("racing update: %v", err)
					}
				}
			}
			cmd := domain.SetPermissions{KeyID: k.ID, Permissions: []string{"b"}}
			if withVersion {
				cmd.ExpectedVersion = ptr(int64(1))
			}
			res, err := e.svc.SetPermissions(e.ctx, "org", cmd)
			final := e.load("org", k.ID)
			if withVersion {
				wantErr(t, err, domain.EConflict)
				if got := e.store.Calls() - start; got != 1 {
					t.Errorf("%d append attempts, want 1 (not retried)", got)
				}
				if final.Version != 2 || !slices.Equal(final.Permissions, []string{"a"}) {
					t.Errorf("key = v%d %v, want v2 [a]", final.Version, final.Permissions)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := e.store.Calls() - start; got != 2 {
				t.Errorf("%d append attempts, want 2 (one retry)", got)
			}
			if res.Key.Version != 3 || final.Version != 3 || final.Name != "raced" || !slices.Equal(final.Permissions, []string{"b"}) {
				t.Errorf("key = %+v, want v3 named raced with [b]", final)
			}
		})
	}
}

// ---- update ----------------------------------------------------------------

func TestUpdateKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	k := e.create("org", domain.CreateKey{Name: "old", Metadata: map[string]string{"a": "1"}}).Key

	steps := []struct {
		name        string
		cmd         domain.UpdateKey
		wantName    string
		wantMeta    map[string]string
		wantVersion int64
		appends     bool
	}{
		{"rename", domain.UpdateKey{Name: ptr("new")}, "new", map[string]string{"a": "1"}, 2, true},
		{"replace metadata", domain.UpdateKey{Metadata: map[string]string{"b": "2"}}, "new", map[string]string{"b": "2"}, 3, true},
		{"both", domain.UpdateKey{Name: ptr("both"), Metadata: map[string]string{"c": "3"}}, "both", map[string]string{"c": "3"}, 4, true},
		{"same values", domain.UpdateKey{Name: ptr("both"), Metadata: map[string]string{"c": "3"}}, "both", map[string]string{"c": "3"}, 4, false},
		{"clear metadata", domain.UpdateKey{Metadata: map[string]string{}}, "both", map[string]string{}, 5, true},
	}
	for _, s := range steps {
		s.cmd.KeyID = k.ID
		calls, seq := e.store.Calls(), e.lastSeq()
		res, err := e.svc.UpdateKey(e.ctx, "org", s.cmd)
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if res.Key.Name != s.wantName || !maps.Equal(res.Key.Metadata, s.wantMeta) || res.Key.Version != s.wantVersion {
			t.Errorf("%s: key = %q %v v%d, want %q %v v%d", s.name, res.Key.Name, res.Key.Metadata, res.Key.Version, s.wantName, s.wantMeta, s.wantVersion)
		}
		if appended := e.lastSeq() != seq; appended != s.appends {
			t.Errorf("%s: appended = %v, want %v", s.name, appended, s.appends)
		}
		if !s.appends && (e.store.Calls() != calls || res.Sequence != seq) {
			t.Errorf("%s: no-op update tried to append or moved the sequence", s.name)
		}
		if got := e.load("org", k.ID); got.Name != s.wantName || !maps.Equal(got.Metadata, s.wantMeta) {
			t.Errorf("%s: stored %q %v", s.name, got.Name, got.Metadata)
		}
	}
	ev, _ := e.lastEvent("org", k.ID)
	var d domain.KeyUpdatedData
	_ = json.Unmarshal(ev.Data, &d)
	if ev.Type != domain.EventKeyUpdated || d.Name != nil {
		t.Errorf("metadata-only update event carries name: %s", ev.Data)
	}

	bad := []struct {
		name    string
		cmd     domain.UpdateKey
		code    string
		mention string
	}{
		{"nothing", domain.UpdateKey{}, domain.EInvalid, "nothing to update"},
		{"empty name", domain.UpdateKey{Name: ptr("")}, domain.EInvalid, "name"},
		{"long name", domain.UpdateKey{Name: ptr(strings.Repeat("x", 201))}, domain.EInvalid, "name"},
		{"bad metadata", domain.UpdateKey{Metadata: map[string]string{"": "x"}}, domain.EInvalid, "metadata"},
	}
	for _, b := range bad {
		b.cmd.KeyID = k.ID
		_, err := e.svc.UpdateKey(e.ctx, "org", b.cmd)
		wantErr(t, err, b.code, b.mention)
	}

	if _, err := e.svc.RevokeKey(e.ctx, "org", domain.RevokeKey{KeyID: k.ID}); err != nil {
		t.Fatal(err)
	}
	_, err := e.svc.UpdateKey(e.ctx, "org", domain.UpdateKey{KeyID: k.ID, Name: ptr("after")})
	wantErr(t, err, domain.EPrecondition, "revoked")
	x := e.create("org", domain.CreateKey{ExpiresAt: ptr(e.clk.Now().Add(time.Second))}).Key
	e.clk.Advance(time.Second)
	_, err = e.svc.UpdateKey(e.ctx, "org", domain.UpdateKey{KeyID: x.ID, Name: ptr("after")})
	wantErr(t, err, domain.EPrecondition, "expired")
}

// ---- rotate ----------------------------------------------------------------

func TestRotateKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.define("a", "b")
	old := e.create("org", domain.CreateKey{Name: "svc", Permissions: []string{"b", "a"}, Metadata: map[string]string{"m": "v"}})
	e.clk.Advance(time.Minute)
	now := e.clk.Now()
	before := e.lastSeq()
	res, err := e.svc.RotateKey(e.ctx, "org", domain.RotateKey{KeyID: old.Key.ID, GracePeriodSeconds: ptr(int64(3600)), Meta: domain.Meta{Actor: &domain.Actor{Type: "user", ID: "u"}}})
	if err != nil {
		t.Fatal(err)
	}
	nk, pk := res.Key, res.Previous
	checks := []struct {
		field     string
		got, want any
	}{
		{"new id differs", nk.ID != old.Key.ID && domain.ValidKeyID(nk.ID), true},
		{"new name", nk.Name, "svc"},
		{"new permissions", nk.Permissions, []string{"a", "b"}},
		{"new metadata", nk.Metadata, map[string]string{"m": "v"}},
		{"new status", nk.Status, domain.StatusActive},
		{"new version", nk.Version, int64(1)},
		{"new created_at", nk.CreatedAt, now},
		{"new mask", nk.Mask, domain.Mask(res.Secret)},
		{"secret valid", domain.ValidSecret(res.Secret), true},
		{"secret differs", res.Secret != old.Secret, true},
		{"previous id", pk.ID, old.Key.ID},
		{"previous expires_at", *pk.ExpiresAt, now.Add(time.Hour)},
		{"previous status", pk.Status, domain.StatusActive},
		{"previous version", pk.Version, int64(2)},
		{"two events", e.lastSeq() - before, uint64(2)},
		{"sequence", res.Sequence, e.lastSeq()},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s = %v, want %v", c.field, c.got, c.want)
		}
	}
	newEv, _ := e.lastEvent("org", nk.ID)
	oldEv, _ := e.lastEvent("org", old.Key.ID)
	ns, _ := newEv.KeyState()
	os, _ := oldEv.KeyState()
	if newEv.Type != domain.EventKeyCreated || ns.RotatedFrom != old.Key.ID || ns.Digest != digestHex(res.Secret) {
		t.Errorf("new key event %s: rotated_from %q, digest matches %v", newEv.Type, ns.RotatedFrom, ns.Digest == digestHex(res.Secret))
	}
	if oldEv.Type != domain.EventKeyRotated || os.RotatedTo != nk.ID || os.Digest != digestHex(old.Secret) || oldEv.Actor.ID != "u" {
		t.Errorf("old key event %s: rotated_to %q", oldEv.Type, os.RotatedTo)
	}
	var rd domain.KeyRotatedData
	_ = json.Unmarshal(oldEv.Data, &rd)
	if rd.NewKeyID != nk.ID || rd.GracePeriodSeconds != 3600 || !rd.ExpiresAt.Equal(now.Add(time.Hour)) {
		t.Errorf("key.rotated data = %+v", rd)
	}
	b, _ := json.Marshal(res)
	var reply map[string]json.RawMessage
	_ = json.Unmarshal(b, &reply)
	if got := slices.Sorted(mapKeys(reply)); !slices.Equal(got, []string{"key", "previous", "secret", "sequence"}) {
		t.Errorf("rotate reply keys = %q", got)
	}

	// The old key expires when the grace period ends.
	e.clk.Advance(time.Hour)
	if got := e.load("org", old.Key.ID).EffectiveStatus(e.clk.Now()); got != domain.StatusExpired {
		t.Errorf("old key after the grace period is %s", got)
	}
	_, err = e.svc.RotateKey(e.ctx, "org", domain.RotateKey{KeyID: old.Key.ID, GracePeriodSeconds: ptr(int64(0))})
	wantErr(t, err, domain.EPrecondition, "expired")
}

func TestRotateKeyGrace(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// Grace 0: the old key is expired at once.
	k := e.create("org", domain.CreateKey{}).Key
	res, err := e.svc.RotateKey(e.ctx, "org", domain.RotateKey{KeyID: k.ID, GracePeriodSeconds: ptr(int64(0))})
	if err != nil {
		t.Fatal(err)
	}
	if res.Previous.Status != domain.StatusExpired || !res.Previous.ExpiresAt.Equal(t0) {
		t.Errorf("grace 0: previous = %s expiring %v, want expired at %v", res.Previous.Status, res.Previous.ExpiresAt, t0)
	}
	_, err = e.svc.UpdateKey(e.ctx, "org", domain.UpdateKey{KeyID: k.ID, Name: ptr("x")})
	wantErr(t, err, domain.EPrecondition, "expired")

	// The grace period never extends an earlier expiry.
	soon := t0.Add(10 * time.Minute)
	k2 := e.create("org", domain.CreateKey{ExpiresAt: &soon}).Key
	res, err = e.svc.RotateKey(e.ctx, "org", domain.RotateKey{KeyID: k2.ID, GracePeriodSeconds: ptr(int64(3600))})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Previous.ExpiresAt.Equal(soon) {
		t.Errorf("previous expires_at = %v, want the earlier %v", res.Previous.ExpiresAt, soon)
	}
	// A shorter grace period than the remaining life shortens it.
	k3 := e.create("org", domain.CreateKey{ExpiresAt: &soon}).Key
	res, _ = e.svc.RotateKey(e.ctx, "org", domain.RotateKey{KeyID: k3.ID, GracePeriodSeconds: ptr(int64(60))})
	if !res.Previous.ExpiresAt.Equal(t0.Add(time.Minute)) {
		t.Errorf("previous expires_at = %v, want %v", res.Previous.ExpiresAt, t0.Add(time.Minute))
	}

	max := int64(domain.MaxGracePeriod / time.Second)
	k4 := e.create("org", domain.CreateKey{}).Key
	tests := []struct {
		name  string
		grace *int64
		code  string
	}{
		{"missing", nil, domain.EInvalid},
		{"negative", ptr(int64(-1)), domain.EInvalid},
		{"over 30 days", ptr(max + 1), domain.EInvalid},
		{"huge", ptr(int64(1) << 62), domain.EInvalid},
		{"30 days", ptr(max), ""},
	}
	for _, tt := range tests {
		before := e.lastSeq()
		_, err := e.svc.RotateKey(e.ctx, "org", domain.RotateKey{KeyID: k4.ID, GracePeriodSeconds: tt.grace})
		if tt.code == "" {
			if err != nil {
				t.Errorf("%s: %v", tt.name, err)
			}
			continue
		}
		if domain.ErrorCode(err) != tt.code || !strings.Contains(domain.ErrorMessage(err), "grace_period_seconds") {
			t.Errorf("%s: %v, want %s naming grace_period_seconds", tt.name, err, tt.code)
		}
		if e.lastSeq() != before {
			t.Errorf("%s: appended", tt.name)
		}
	}

	// Revoked keys cannot be rotated.
	k5 := e.create("org", domain.CreateKey{}).Key
	if _, err := e.svc.RevokeKey(e.ctx, "org", domain.RevokeKey{KeyID: k5.ID}); err != nil {
		t.Fatal(err)
	}
	before := e.lastSeq()
	_, err = e.svc.RotateKey(e.ctx, "org", domain.RotateKey{KeyID: k5.ID, GracePeriodSeconds: ptr(int64(0))})
	wantErr(t, err, domain.EPrecondition, "revoked")
	if e.lastSeq() != before {
		t.Errorf("rotate of a revoked key appended")
	}
}

// ---- not found -------------------------------------------------------------

func TestKeyOfAnotherOrgIsNotFound(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.define("a")
	k := e.create("org_a", domain.CreateKey{Permissions: []string{"a"}}).Key
	unknown := "key_01J0000000000000000000000Z"
	for _, tc := range []struct{ org, id string }{{"org_b", k.ID}, {"org_a", unknown}} {
		ops := map[string]func() error{
			"load": func() error { _, _, err := e.svc.LoadKey(e.ctx, tc.org, tc.id); return err },
			"revoke": func() error {
				_, err := e.svc.RevokeKey(e.ctx, tc.org, domain.RevokeKey{KeyID: tc.id})
				return err
			},
			"set_permissions": func() error {
				_, err := e.svc.SetPermissions(e.ctx, tc.org, domain.SetPermissions{KeyID: tc.id, Permissions: []string{"a"}})
				return err
			},
			"update": func() error {
				_, err := e.svc.UpdateKey(e.ctx, tc.org, domain.UpdateKey{KeyID: tc.id, Name: ptr("x")})
				return err
			},
			"rotate": func() error {
				_, err := e.svc.RotateKey(e.ctx, tc.org, domain.RotateKey{KeyID: tc.id, GracePeriodSeconds: ptr(int64(0))})
				return err
			},
		}
		for name, op := range ops {
			before := e.lastSeq()
			err := op()
			if domain.ErrorCode(err) != domain.ENotFound || !strings.Contains(domain.ErrorMessage(err), tc.id) {
				t.Errorf("%s of %s in %s: %v, want not_found naming the key", name, tc.id, tc.org, err)
			}
			if e.lastSeq() != before {
				t.Errorf("%s appended", name)
			}
		}
	}
	if got := e.load("org_a", k.ID); got.Status != domain.StatusActive || got.Version != 1 {
		t.Errorf("key of org_a changed: %+v", got)
	}
	_, err := e.svc.RevokeKey(e.ctx, "org_a", domain.RevokeKey{KeyID: "key_short"})
	wantErr(t, err, domain.EInvalid, `"key_short"`)
	_, err = e.svc.RevokeKey(e.ctx, "bad.org", domain.RevokeKey{KeyID: k.ID})
	wantErr(t, err, domain.EInvalid, "organization id")
}

// ---- catalog ---------------------------------------------------------------

func TestCatalogCommands(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c, seq, err := e.svc.Catalog(e.ctx)
	if err != nil || c.Len() != 0 || seq != 0 {
		t.Fatalf("empty catalog = %d entries at %d, %v", c.Len(), seq, err)
	}
	def := func(slug, desc string) (domain.PermissionResult, error) {
		return e.svc.DefinePermission(e.ctx, domain.DefinePermission{Slug: slug, Description: desc})
	}
	ret := func(slug string) (domain.PermissionResult, error) {
		return e.svc.RetirePermission(e.ctx, domain.RetirePermission{Slug: slug})
	}
	steps := []struct {
		name     string
		run      func() (domain.PermissionResult, error)
		code     string
		appends  bool
		wantPerm domain.Permission
	}{
		{"define a", func() (domain.PermissionResult, error) { return def("a", "A") }, "", true, active("a", "A")},
		{"define b", func() (domain.PermissionResult, error) { return def("b", "B") }, "", true, active("b", "B")},
		{"define a again", func() (domain.PermissionResult, error) { return def("a", "A") }, "", false, active("a", "A")},
		{"redescribe a", func() (domain.PermissionResult, error) { return def("a", "AA") }, "", true, active("a", "AA")},
		{"retire a", func() (domain.PermissionResult, error) { return ret("a") }, "", true, retired("a", "AA")},
		{"retire a again", func() (domain.PermissionResult, error) { return ret("a") }, "", false, retired("a", "AA")},
		{"define retired a", func() (domain.PermissionResult, error) { return def("a", "AA") }, domain.EPrecondition, false, domain.Permission{}},
		{"retire unknown", func() (domain.PermissionResult, error) { return ret("zz") }, domain.ENotFound, false, domain.Permission{}},
		{"define bad slug", func() (domain.PermissionResult, error) { return def("A", "") }, domain.EInvalid, false, domain.Permission{}},
	}
	for _, s := range steps {
		before := e.lastSeq()
		res, err := s.run()
		if domain.ErrorCode(err) != s.code {
			t.Errorf("%s: %v, want code %q", s.name, err, s.code)
			continue
		}
		if appended := e.lastSeq() != before; appended != s.appends {
			t.Errorf("%s: appended = %v, want %v", s.name, appended, s.appends)
		}
		if err != nil {
			continue
		}
		if res.Permission != s.wantPerm || res.Sequence != e.lastSeq() {
			t.Errorf("%s: %+v at %d, want %+v at %d", s.name, res.Permission, res.Sequence, s.wantPerm, e.lastSeq())
		}
	}
	c, seq, _ = e.svc.Catalog(e.ctx)
	if !reflect.DeepEqual(c.List(), []domain.Permission{retired("a", "AA"), active("b", "B")}) || seq != e.lastSeq() {
		t.Errorf("catalog = %v at %d", c.List(), seq)
	}
	rec, _, _ := e.mem.Last(e.ctx, domain.CatalogSubject)
	if got := e.mem.Type(rec.Sequence); got != domain.EventPermissionRetired {
		t.Errorf("last catalog event type %q", got)
	}
}

func TestRetiredPermissionStaysOnKeysButCannotBeGranted(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.define("a", "b")
	k := e.create("org", domain.CreateKey{Permissions: []string{"a", "b"}}).Key
	if _, err := e.svc.RetirePermission(e.ctx, domain.RetirePermission{Slug: "a"}); err != nil {
		t.Fatal(err)
	}
	if got := e.load("org", k.ID); !slices.Equal(got.Permissions, []string{"a", "b"}) || got.Version != 1 {
		t.Errorf("key after retire = %v v%d, want [a b] v1 (retire touches no key)", got.Permissions, got.Version)
	}
	_, err := e.svc.SetPermissions(e.ctx, "org", domain.SetPermissions{KeyID: k.ID, Permissions: []string{"a", "b"}})
	wantErr(t, err, domain.EInvalid, `"a"`, "retired")
	_, err = e.svc.CreateKey(e.ctx, "org", domain.CreateKey{Name: "n", Permissions: []string{"a"}})
	wantErr(t, err, domain.EInvalid, `"a"`, "retired")
	res, err := e.svc.SetPermissions(e.ctx, "org", domain.SetPermissions{KeyID: k.ID, Permissions: []string{"b"}})
	if err != nil || !slices.Equal(res.Key.Permissions, []string{"b"}) {
		t.Fatalf("dropping the retired permission: %+v, %v", res.Key, err)
	}
	_, err = e.svc.SetPermissions(e.ctx, "org", domain.SetPermissions{KeyID: k.ID, Permissions: []string{"a", "b"}})
	wantErr(t, err, domain.EInvalid, `"a"`)
	// Rotation keeps what the key holds.
	k2 := e.create("org", domain.CreateKey{Permissions: []string{"b"}}).Key
	if _, err := e.svc.RetirePermission(e.ctx, domain.RetirePermission{Slug: "b"}); err != nil {
		t.Fatal(err)
	}
	if r, err := e.svc.RotateKey(e.ctx, "org", domain.RotateKey{KeyID: k2.ID, GracePeriodSeconds: ptr(int64(0))}); err != nil || !slices.Equal(r.Key.Permissions, []string{"b"}) {
		t.Errorf("rotate of a key holding a retired permission = %+v, %v", r.Key, err)
	}
}

// ---- concurrency -----------------------------------------------------------

func TestConcurrentWriters(t *testing.T) {
	t.Parallel()
	for round := range 10 {
		e := newEnv(t)
		k := e.create("org", domain.CreateKey{}).Key
		// Widen the window between load and append.
		e.store.before = func(int) { runtime.Gosched() }
		const writers = 20
		type outcome struct {
			revoke  bool
			version int64
			err     error
		}
		out := make([]outcome, writers)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				// Some rounds only update; in the others every fifth writer revokes.
				if round%2 == 1 && i%5 == 4 {
					r, err := e.svc.RevokeKey(e.ctx, "org", domain.RevokeKey{KeyID: k.ID})
					out[i] = outcome{true, r.Key.Version, err}
					return
				}
				r, err := e.svc.UpdateKey(e.ctx, "org", domain.UpdateKey{KeyID: k.ID, Name: ptr(fmt.Sprint("writer ", i))})
				out[i] = outcome{false, r.Key.Version, err}
			}()
		}
		close(start)
		wg.Wait()

		updates, revokes := 0, 0
		versions := map[int64]bool{}
		for i, o := range out {
			if o.err != nil {
				code := domain.ErrorCode(o.err)
				if code != domain.EConflict && !(code == domain.EPrecondition && !o.revoke) {
					t.Errorf("round %d writer %d: %v", round, i, o.err)
				}
				continue
			}
			if o.revoke {
				revokes++
				continue
			}
			updates++
			if versions[o.version] {
				t.Errorf("round %d: two updates replied version %d", round, o.version)
			}
			versions[o.version] = true
		}
		final := e.load("org", k.ID)
		want := int64(1 + updates)
		if revokes > 0 {
			want++
		}
		if final.Version != want {
			t.Errorf("round %d: version %d after %d updates and %d revokes, want %d", round, final.Version, updates, revokes, want)
		}
		if (final.Status == domain.StatusRevoked) != (revokes > 0) {
			t.Errorf("round %d: status %s after %d successful revokes", round, final.Status, revokes)
		}
		if got := e.lastSeq(); got != uint64(final.Version) {
			t.Errorf("round %d: %d events stored, want %d (one per change)", round, got, final.Version)
		}
	}
}

// ---- lost replies ------------------------------------------------------------

// A landed append whose reply was lost, retried by the store and answered
// with ErrConflict: the command still succeeds, and exactly once.
func TestLostReply(t *testing.T) {
	t.Parallel()
	type result struct {
		keyID   string
		secret  string
		seq     uint64
		version int64
	}
	tests := []struct {
		name   string
		events uint64
		run    func(e *env, k domain.KeyView) (result, error)
		check  func(t *testing.T, e *env, k domain.KeyView, r result)
	}{
		{"create", 1, func(e *env, _ domain.KeyView) (result, error) {
			r, err := e.svc.CreateKey(e.ctx, "org", domain.CreateKey{Name: "lost"})
			return result{r.Key.ID, r.Secret, r.Sequence, r.Key.Version}, err
		}, func(t *testing.T, e *env, _ domain.KeyView, r result) {
			if st := e.load("org", r.keyID); st.Digest != digestHex(r.secret) || st.Name != "lost" {
				t.Errorf("stored key %+v does not match the replied secret", st)
			}
		}},
		{"create with idempotency key", 1, func(e *env, _ domain.KeyView) (result, error) {
			r, err := e.svc.CreateKey(e.ctx, "org", domain.CreateKey{Name: "lost", IdempotencyKey: "i"})
			return result{r.Key.ID, r.Secret, r.Sequence, r.Key.Version}, err
		}, func(t *testing.T, e *env, _ domain.KeyView, r result) {
			again := e.create("org", domain.CreateKey{IdempotencyKey: "i"})
			if again.Key.ID != r.keyID || again.Secret != "" {
				t.Errorf("repeat after a lost reply = %s (secret %v), want %s", again.Key.ID, again.Secret != "", r.keyID)
			}
		}},
		{"revoke", 1, func(e *env, k domain.KeyView) (result, error) {
			r, err := e.svc.RevokeKey(e.ctx, "org", domain.RevokeKey{KeyID: k.ID})
			return result{r.Key.ID, "", r.Sequence, r.Key.Version}, err
		}, func(t *testing.T, e *env, k domain.KeyView, r result) {
			if st := e.load("org", k.ID); st.Status != domain.StatusRevoked {
				t.Errorf("status %s", st.Status)
			}
		}},
		{"update", 1, func(e *env, k domain.KeyView) (result, error) {
			r, err := e.svc.UpdateKey(e.ctx, "org", domain.UpdateKey{KeyID: k.ID, Name: ptr("renamed")})
			return result{r.Key.ID, "", r.Sequence, r.Key.Version}, err
		}, nil},
		{"set_permissions", 1, func(e *env, k domain.KeyView) (result, error) {
			r, err := e.svc.SetPermissions(e.ctx, "org", domain.SetPermissions{KeyID: k.ID, Permissions: []string{"a", "b"}})
			return result{r.Key.ID, "", r.Sequence, r.Key.Version}, err
		}, nil},
		{"set_permissions with expected_version", 1, func(e *env, k domain.KeyView) (result, error) {
			r, err := e.svc.SetPermissions(e.ctx, "org", domain.SetPermissions{KeyID: k.ID, Permissions: []string{"b"}, ExpectedVersion: ptr(int64(1))})
			return result{r.Key.ID, "", r.Sequence, r.Key.Version}, err
		}, nil},
		{"rotate", 2, func(e *env, k domain.KeyView) (result, error) {
			r, err := e.svc.RotateKey(e.ctx, "org", domain.RotateKey{KeyID: k.ID, GracePeriodSeconds: ptr(int64(60))})
			if err == nil && (r.Previous.ID != k.ID || r.Previous.Version != 2 || !r.Previous.ExpiresAt.Equal(t0.Add(time.Minute))) {
				return result{}, fmt.Errorf("previous = %+v", r.Previous)
			}
			return result{r.Key.ID, r.Secret, r.Sequence, r.Key.Version}, err
		}, func(t *testing.T, e *env, k domain.KeyView, r result) {
			if st := e.load("org", r.keyID); st.Digest != digestHex(r.secret) || st.RotatedFrom != k.ID || st.Version != 1 {
				t.Errorf("new key %+v does not match the reply", st)
			}
			if st := e.load("org", k.ID); st.RotatedTo != r.keyID || st.Version != 2 {
				t.Errorf("old key %+v", st)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.define("a", "b")
			k := e.create("org", domain.CreateKey{Permissions: []string{"a"}}).Key
			before, calls := e.lastSeq(), e.store.Calls()
			e.store.lostReply = func(n int) bool { return n == calls+1 }
			r, err := tt.run(e, k)
			e.store.lostReply = nil
			if err != nil {
				t.Fatalf("command after a lost reply: %v", err)
			}
			if got := e.lastSeq() - before; got != tt.events {
				t.Errorf("%d events stored, want %d", got, tt.events)
			}
			if r.seq != e.lastSeq() {
				t.Errorf("reply sequence %d, want %d", r.seq, e.lastSeq())
			}
			wantVersion := int64(2)
			if strings.HasPrefix(tt.name, "create") || tt.name == "rotate" {
				wantVersion = 1
			}
			if r.version != wantVersion {
				t.Errorf("reply version %d, want %d", r.version, wantVersion)
			}
			if tt.check != nil {
				tt.check(t, e, k, r)
			}
		})
	}

	t.Run("define and retire", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		e.store.lostReply = func(int) bool { return true }
		r, err := e.svc.DefinePermission(e.ctx, domain.DefinePermission{Slug: "a", Description: "A"})
		if err != nil || r.Permission != active("a", "A") || r.Sequence != 1 || e.lastSeq() != 1 {
			t.Errorf("define after a lost reply = %+v, %v; %d events", r, err, e.lastSeq())
		}
		r, err = e.svc.RetirePermission(e.ctx, domain.RetirePermission{Slug: "a"})
		if err != nil || r.Permission != retired("a", "A") || r.Sequence != 2 || e.lastSeq() != 2 {
			t.Errorf("retire after a lost reply = %+v, %v; %d events", r, err, e.lastSeq())
		}
	})
}

// ---- store failures ----------------------------------------------------------

type failingStore struct{ err error }

func (f failingStore) Append(context.Context, ...domain.AppendMsg) (uint64, error) { return 0, f.err }
func (f failingStore) Next(context.Context, string, uint64) (domain.Record, bool, error) {
	return domain.Record{}, false, f.err
}
func (f failingStore) Last(context.Context, string) (domain.Record, bool, error) {
	return domain.Record{}, false, f.err
}

func TestStoreUnavailable(t *testing.T) {
	t.Parallel()
	for _, cause := range []error{errors.New("nats: connection closed to 10.0.0.1 secret-ish"), context.DeadlineExceeded} {
		svc := &domain.Service{Store: failingStore{cause}, Digester: domain.NewDigester(nil), Now: time.Now, Rand: rand.Reader}
		ctx := t.Context()
		errs := []error{}
		_, err := svc.CreateKey(ctx, "org", domain.CreateKey{Name: "n"})
		errs = append(errs, err)
		_, err = svc.RevokeKey(ctx, "org", domain.RevokeKey{KeyID: "key_01J0000000000000000000000Z"})
		errs = append(errs, err)
		_, err = svc.DefinePermission(ctx, domain.DefinePermission{Slug: "a"})
		errs = append(errs, err)
		for i, err := range errs {
			if domain.ErrorCode(err) != domain.EUnavailable || strings.Contains(domain.ErrorMessage(err), "10.0.0.1") {
				t.Errorf("%v: op %d: %v (message %q), want unavailable without internals", cause, i, err, domain.ErrorMessage(err))
			}
		}
	}
}

// stallingIdempotency holds a create between its reservation and its append:
// reserved is closed once Reserve has reserved, and Reserve returns only
// when resume is closed.
type stallingIdempotency struct {
	domain.IdempotencyStore
	reserved, resume chan struct{}
}

func (s *stallingIdempotency) Reserve(ctx context.Context, org, key, keyID string, now time.Time) (domain.IdempotencyRecord, bool, error) {
	rec, ok, err := s.IdempotencyStore.Reserve(ctx, org, key, keyID, now)
	close(s.reserved)
	<-s.resume
	return rec, ok, err
}
