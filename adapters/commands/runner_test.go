package commands_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyd-dev/keyd/adapters/commands"
	"github.com/keyd-dev/keyd/adapters/metrics"
	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/eventstore"
	"github.com/keyd-dev/keyd/internal/testenv"
)

type fixture struct {
	t      *testing.T
	ctx    context.Context
	mem    *eventstore.Memory
	runner *commands.Runner
	m      *metrics.Metrics

	mu      sync.Mutex
	waited  []uint64
	waitErr error
}

func newFixture(t *testing.T) *fixture {
	mem := eventstore.NewMemory()
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	svc := &domain.Service{
		Store: mem, Idempotency: eventstore.NewMemoryIdempotency(),
		Digester: domain.NewDigester([]byte("secret")),
		Now:      func() time.Time { return now },
		Rand:     testenv.LockedRand(7),
	}
	f := &fixture{t: t, ctx: t.Context(), mem: mem, m: metrics.New()}
	f.runner = &commands.Runner{
		Service: svc, Metrics: f.m,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		WaitApplied: func(ctx context.Context, seq uint64) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.waited = append(f.waited, seq)
			return f.waitErr
		},
	}
	return f
}

func (f *fixture) takeWaited() []uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.waited
	f.waited = nil
	return w
}

func (f *fixture) run(name, org, payload string, o commands.Transport) (any, error) {
	return f.runner.Run(f.ctx, name, org, []byte(payload), o)
}

func (f *fixture) mustRun(name, org, payload string, o commands.Transport) any {
	f.t.Helper()
	reply, err := f.run(name, org, payload, o)
	if err != nil {
		f.t.Fatalf("%s %s: %v", name, payload, err)
	}
	return reply
}

func (f *fixture) lastSeq() uint64 {
	n, _ := f.mem.LastSequence(f.ctx)
	return n
}

func (f *fixture) lastEvent(subject string) domain.Event {
	f.t.Helper()
	rec, ok, err := f.mem.Last(f.ctx, subject)
	if err != nil || !ok {
		f.t.Fatalf("no event on %s: %v", subject, err)
	}
	ev, err := domain.DecodeEvent(rec.Data)
	if err != nil {
		f.t.Fatal(err)
	}
	return ev
}

func (f *fixture) createKey(org string, perms ...string) domain.KeyView {
	f.t.Helper()
	b, _ := json.Marshal(map[string]any{"name": "k", "permissions": append([]string{}, perms...)})
	res := f.mustRun(commands.Create, org, string(b), commands.Transport{}).(domain.CreateKeyResult)
	f.takeWaited()
	return res.Key
}

func (f *fixture) metricsText() string {
	rec := httptest.NewRecorder()
	f.m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	return rec.Body.String()
}

func wantCode(t *testing.T, err error, code string, mention ...string) {
	t.Helper()
	var de *domain.Error
	if !errors.As(err, &de) || de.Code != code {
		t.Fatalf("error = %v, want a *domain.Error with code %q", err, code)
	}
	for _, m := range mention {
		if !strings.Contains(de.Message, m) {
			t.Errorf("message %q does not mention %s", de.Message, m)
		}
	}
}

func TestRunDispatchesEachCommand(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	var keyID, newKeyID string
	steps := []struct {
		name    string
		payload func() string
		check   func(t *testing.T, reply any) uint64 // returns the reply's sequence
		waits   bool
	}{
		{commands.Define, func() string { return `{"slug":"a","description":"A"}` }, func(t *testing.T, r any) uint64 {
			res := r.(domain.PermissionResult)
			if res.Permission.Slug != "a" || res.Permission.Status != domain.PermissionActive {
				t.Errorf("define reply %+v", res)
			}
			return res.Sequence
		}, false},
		{commands.Define, func() string { return `{"slug":"b","description":"B"}` }, func(t *testing.T, r any) uint64 {
			return r.(domain.PermissionResult).Sequence
		}, false},
		{commands.Create, func() string { return `{"name":"ci","permissions":["a"]}` }, func(t *testing.T, r any) uint64 {
			res := r.(domain.CreateKeyResult)
			keyID = res.Key.ID
			if res.Secret == "" || res.Key.Name != "ci" || res.Key.OrgID != "org" {
				t.Errorf("create reply %+v", res.Key)
			}
			return res.Sequence
		}, true}, // read-your-create
		{commands.Update, func() string { return `{"key_id":"` + keyID + `","name":"renamed"}` }, func(t *testing.T, r any) uint64 {
			res := r.(domain.KeyResult)
			if res.Key.Name != "renamed" {
				t.Errorf("update reply %+v", res.Key)
			}
			return res.Sequence
		}, false},
		{commands.SetPermissions, func() string { return `{"key_id":"` + keyID + `","permissions":["a","b"]}` }, func(t *testing.T, r any) uint64 {
			res := r.(domain.KeyResult)
			if strings.Join(res.Key.Permissions, ",") != "a,b" {
				t.Errorf("set_permissions reply %+v", res.Key)
			}
			return res.Sequence
		}, true},
		{commands.Rotate, func() string { return `{"key_id":"` + keyID + `","grace_period_seconds":60}` }, func(t *testing.T, r any) uint64 {
			res := r.(domain.RotateKeyResult)
			newKeyID = res.Key.ID
			if res.Previous.ID != keyID || res.Key.ID == keyID || res.Secret == "" {
				t.Errorf("rotate reply %+v", res)
			}
			return res.Sequence
		}, true},
		{commands.Revoke, func() string { return `{"key_id":"` + newKeyID + `","reason":"r"}` }, func(t *testing.T, r any) uint64 {
			res := r.(domain.KeyResult)
			if res.Key.ID != newKeyID || res.Key.Status != domain.StatusRevoked {
				t.Errorf("revoke reply %+v", res.Key)
			}
			return res.Sequence
		}, true},
		{commands.Retire, func() string { return `{"slug":"b"}` }, func(t *testing.T, r any) uint64 {
			res := r.(domain.PermissionResult)
			if res.Permission.Status != domain.PermissionRetired {
				t.Errorf("retire reply %+v", res)
			}
			return res.Sequence
		}, true},
	}
	for _, s := range steps {
		before := f.lastSeq()
		reply, err := f.run(s.name, "org", s.payload(), commands.Transport{})
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		seq := s.check(t, reply)
		if seq == 0 || seq != f.lastSeq() || seq <= before {
			t.Errorf("%s: reply sequence %d, store at %d (was %d)", s.name, seq, f.lastSeq(), before)
		}
		got := f.takeWaited()
		var want []uint64
		if s.waits {
			want = []uint64{seq}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: WaitApplied called with %v, want %v", s.name, got, want)
		}
		if _, err := json.Marshal(reply); err != nil {
			t.Errorf("%s: reply does not marshal: %v", s.name, err)
		}
	}
}

func TestRunWaitApplied(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	k := f.createKey("org")
	// A no-op revoke still waits for the sequence that reflects it.
	r1 := f.mustRun(commands.Revoke, "org", `{"key_id":"`+k.ID+`"}`, commands.Transport{}).(domain.KeyResult)
	f.takeWaited()
	r2 := f.mustRun(commands.Revoke, "org", `{"key_id":"`+k.ID+`"}`, commands.Transport{}).(domain.KeyResult)
	if got := f.takeWaited(); len(got) != 1 || got[0] != r1.Sequence || r2.Sequence != r1.Sequence {
		t.Errorf("second revoke waited for %v, want [%d]", got, r1.Sequence)
	}
	// A failed command does not wait.
	if _, err := f.run(commands.Revoke, "org", `{"key_id":"key_01J0000000000000000000000Z"}`, commands.Transport{}); err == nil {
		t.Fatal("revoke of an unknown key succeeded")
	}
	if got := f.takeWaited(); len(got) != 0 {
		t.Errorf("failed revoke waited for %v", got)
	}
	// A revoke is answered only once this process refuses the key: with a
	// verifier that does not catch up, the reply says "retry" (the revoke is
	// stored, and revoking again is harmless). Rotate, whose repetition is
	// not harmless, still succeeds.
	f.waitErr = context.DeadlineExceeded
	k2 := f.createKey("org")
	if _, err := f.run(commands.Revoke, "org", `{"key_id":"`+k2.ID+`"}`, commands.Transport{}); domain.ErrorCode(err) != domain.EUnavailable {
		t.Errorf("revoke with a slow verifier: %v, want unavailable", err)
	}
	if ev := f.lastEvent(domain.KeySubject("org", k2.ID)); ev.Type != domain.EventKeyRevoked {
		t.Errorf("the revoke was not stored: last event %s", ev.Type)
	}
	k4 := f.createKey("org")
	if _, err := f.run(commands.Rotate, "org", `{"key_id":"`+k4.ID+`","grace_period_seconds":0}`, commands.Transport{}); err != nil {
		t.Errorf("rotate with a slow verifier: %v", err)
	}
	f.waitErr = nil
	// Without WaitApplied, nothing waits.
	f.runner.WaitApplied = nil
	k3 := f.createKey("org")
	if _, err := f.run(commands.Revoke, "org", `{"key_id":"`+k3.ID+`"}`, commands.Transport{}); err != nil {
		t.Error(err)
	}
}

func TestRunUnknownCommand(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for _, name := range []string{"delete", "", "CREATE", "verify"} {
		reply, err := f.run(name, "org", `{}`, commands.Transport{})
		if reply != nil {
			t.Errorf("%q: reply %v", name, reply)
		}
		wantCode(t, err, domain.EInvalid, fmt.Sprintf("%q", name), "create", "revoke", "set_permissions", "update", "rotate", "define", "retire")
	}
	if strings.Contains(f.metricsText(), `type="delete"`) {
		t.Errorf("an unknown command name became a metric label")
	}
}

func TestRunOverrides(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.mustRun(commands.Define, "", `{"slug":"a","description":"A"}`, commands.Transport{})
	k := f.createKey("org")
	other := f.createKey("org")

	tests := []struct {
		name    string
		command string
		payload string
		o       commands.Transport
		code    string
		mention []string
	}{
		{"key id mismatch", commands.Revoke, `{"key_id":"` + other.ID + `"}`, commands.Transport{KeyID: k.ID}, domain.EInvalid, []string{k.ID, other.ID}},
		{"key id mismatch on update", commands.Update, `{"key_id":"` + other.ID + `","name":"x"}`, commands.Transport{KeyID: k.ID}, domain.EInvalid, []string{"key_id"}},
		{"key id mismatch on rotate", commands.Rotate, `{"key_id":"` + other.ID + `","grace_period_seconds":0}`, commands.Transport{KeyID: k.ID}, domain.EInvalid, []string{"key_id"}},
		{"key id mismatch on set_permissions", commands.SetPermissions, `{"key_id":"` + other.ID + `","permissions":[]}`, commands.Transport{KeyID: k.ID}, domain.EInvalid, []string{"key_id"}},
		{"no key id", commands.Revoke, `{}`, commands.Transport{}, domain.EInvalid, []string{"key_id is required"}},
		{"slug mismatch", commands.Define, `{"slug":"b","description":"B"}`, commands.Transport{Slug: "a"}, domain.EInvalid, []string{`"a"`, `"b"`}},
		{"no slug", commands.Retire, ``, commands.Transport{}, domain.EInvalid, []string{"slug is required"}},
		{"unknown field", commands.Create, `{"name":"n","nme":"x"}`, commands.Transport{}, domain.EInvalid, []string{`"nme"`}},
		{"too large", commands.Create, `{"name":"` + strings.Repeat("n", commands.MaxBytes) + `"}`, commands.Transport{}, domain.ETooLarge, nil},
		{"bad org", commands.Create, `{"name":"n"}`, commands.Transport{}, domain.EInvalid, []string{"organization"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			org := "org"
			if tt.name == "bad org" {
				org = "bad.org"
			}
			before := f.lastSeq()
			_, err := f.run(tt.command, org, tt.payload, tt.o)
			wantCode(t, err, tt.code, tt.mention...)
			if f.lastSeq() != before {
				t.Errorf("a rejected command appended")
			}
		})
	}

	// The path's key id fills in an absent body key id; the same id in both is fine.
	for _, payload := range []string{`{"name":"from path"}`, `{"key_id":"` + k.ID + `","name":"both"}`} {
		res := f.mustRun(commands.Update, "org", payload, commands.Transport{KeyID: k.ID}).(domain.KeyResult)
		if res.Key.ID != k.ID {
			t.Errorf("update %s applied to %s", payload, res.Key.ID)
		}
	}
	// The path's slug fills in the body's.
	res := f.mustRun(commands.Define, "", `{"description":"B"}`, commands.Transport{Slug: "b"}).(domain.PermissionResult)
	if res.Permission.Slug != "b" {
		t.Errorf("define with slug from the path = %+v", res.Permission)
	}
}

func TestRunActorAndCommandID(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	widget := &domain.Actor{Type: "user", ID: "widget_user_1"}
	bodyActor := `"actor":{"type":"service","id":"claimed"}`

	// Create: the widget session's actor wins over the body's.
	res := f.mustRun(commands.Create, "org", `{"name":"w",`+bodyActor+`}`, commands.Transport{Actor: widget, CommandID: "cmd-create-1"}).(domain.CreateKeyResult)
	ev := f.lastEvent(domain.KeySubject("org", res.Key.ID))
	if ev.Actor != *widget || ev.CommandID != "cmd-create-1" {
		t.Errorf("create event actor %+v command %q, want %+v cmd-create-1", ev.Actor, ev.CommandID, *widget)
	}
	// Revoke likewise.
	f.mustRun(commands.Revoke, "org", `{`+bodyActor+`}`, commands.Transport{KeyID: res.Key.ID, Actor: widget})
	ev = f.lastEvent(domain.KeySubject("org", res.Key.ID))
	if ev.Type != domain.EventKeyRevoked || ev.Actor != *widget {
		t.Errorf("revoke event %s actor %+v, want %+v", ev.Type, ev.Actor, *widget)
	}
	// Without an override, the body's actor is recorded; without either, the system.
	res = f.mustRun(commands.Create, "org", `{"name":"b",`+bodyActor+`}`, commands.Transport{}).(domain.CreateKeyResult)
	if ev := f.lastEvent(domain.KeySubject("org", res.Key.ID)); ev.Actor != (domain.Actor{Type: "service", ID: "claimed"}) {
		t.Errorf("create event actor %+v, want the body's", ev.Actor)
	}
	res = f.mustRun(commands.Create, "org", `{"name":"s"}`, commands.Transport{}).(domain.CreateKeyResult)
	if ev := f.lastEvent(domain.KeySubject("org", res.Key.ID)); ev.Actor.Type != "system" {
		t.Errorf("create event actor %+v, want a system actor", ev.Actor)
	}
	// The transport's default actor (the admin's on HTTP) is recorded when
	// the body names none (absent or null); an actor in the body wins.
	admin := &domain.Actor{Type: "service", ID: "admin"}
	for payload, want := range map[string]domain.Actor{
		`{"name":"d"}`:                   *admin,
		`{"name":"d","actor":null}`:      *admin,
		`{"name":"d",` + bodyActor + `}`: {Type: "service", ID: "claimed"},
	} {
		res = f.mustRun(commands.Create, "org", payload, commands.Transport{DefaultActor: admin}).(domain.CreateKeyResult)
		if ev := f.lastEvent(domain.KeySubject("org", res.Key.ID)); ev.Actor != want {
			t.Errorf("%s with a default actor: event actor %+v, want %+v", payload, ev.Actor, want)
		}
	}
	// Catalog commands record the override too.
	f.mustRun(commands.Define, "", `{"slug":"p","description":"P"}`, commands.Transport{Actor: &domain.Actor{Type: "user", ID: "admin"}})
	if ev := f.lastEvent(domain.CatalogSubject); ev.Actor.ID != "admin" {
		t.Errorf("define event actor %+v", ev.Actor)
	}
	// A body actor that is not valid is rejected.
	_, err := f.run(commands.Create, "org", `{"name":"x","actor":{"type":"root","id":"x"}}`, commands.Transport{})
	wantCode(t, err, domain.EInvalid, "actor.type")
}

func TestRunMetrics(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	k := f.createKey("org")
	f.createKey("org")
	f.mustRun(commands.Update, "org", `{"key_id":"`+k.ID+`","name":"x"}`, commands.Transport{})
	f.run(commands.Revoke, "org", `{"key_id":"key_01J0000000000000000000000Z"}`, commands.Transport{})
	f.run(commands.Revoke, "org", `{"key_id":5}`, commands.Transport{})
	f.run(commands.Create, "org", `{"name":"`+strings.Repeat("n", commands.MaxBytes)+`"}`, commands.Transport{})
	f.run("bogus", "org", `{}`, commands.Transport{})

	text := f.metricsText()
	for _, want := range []string{
		`keyd_commands_total{outcome="ok",type="create"} 2`,
		`keyd_commands_total{outcome="too_large",type="create"} 1`,
		`keyd_commands_total{outcome="ok",type="update"} 1`,
		`keyd_commands_total{outcome="not_found",type="revoke"} 1`,
		`keyd_commands_total{outcome="invalid_argument",type="revoke"} 1`,
		`keyd_command_duration_seconds_count{type="create"} 3`,
		`keyd_command_duration_seconds_count{type="revoke"} 2`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(text, "bogus") {
		t.Errorf("metrics carry an unknown command name")
	}
	// No metrics at all is fine.
	f.runner.Metrics = nil
	f.createKey("org")
}
