package natscmd

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyd-dev/keyd/adapters/commands"
	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/eventstore"
	"github.com/keyd-dev/keyd/internal/testenv"
)

func TestParse(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		subject, org, name, code string
	}{
		{"keyd.cmd.keys.org_1.create", "org_1", "create", ""},
		{"keyd.cmd.keys.A-b_9.set_permissions", "A-b_9", "set_permissions", ""},
		{"keyd.cmd.permissions.define", "", "define", ""},
		{"keyd.cmd.permissions.retire", "", "retire", ""},
		{"keyd.cmd.keys.org_1.define", "", "", domain.EInvalid},
		{"keyd.cmd.permissions.create", "", "", domain.EInvalid},
		{"keyd.cmd.keys.org_1", "", "", domain.EInvalid},
		{"keyd.cmd.keys.org_1.create.extra", "", "", domain.EInvalid},
		{"keyd.cmd.keys." + strings.Repeat("o", 65) + ".create", "", "", domain.EInvalid},
		{"other.cmd.keys.org.create", "", "", domain.EInvalid},
	} {
		org, name, err := Parse(tc.subject)
		if got := domain.ErrorCode(err); got != tc.code || org != tc.org || name != tc.name {
			t.Errorf("Parse(%q) = %q, %q, %v; want %q, %q, code %q", tc.subject, org, name, err, tc.org, tc.name, tc.code)
		}
	}
}

// TestResponder runs the responder on a real NATS server: every request
// gets one reply, errors carry their code in a header, publishes without a
// reply subject run nothing, and in-flight requests finish on Stop.
func TestResponder(t *testing.T) {
	t.Parallel()
	_, nc := testenv.JetStream(t)
	mem := eventstore.NewMemory()
	svc := &domain.Service{Store: mem, Idempotency: eventstore.NewMemoryIdempotency(),
		Digester: domain.NewDigester([]byte("secret")), Now: time.Now, Rand: rand.Reader}
	r := &Responder{Conn: nc, Runner: &commands.Runner{Service: svc}, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	req := func(subject, body string) (map[string]any, string) {
		t.Helper()
		m, err := nc.Request(subject, []byte(body), 5*time.Second)
		if err != nil {
			t.Fatalf("request %s: %v", subject, err)
		}
		var out map[string]any
		if err := json.Unmarshal(m.Data, &out); err != nil {
			t.Fatalf("reply %q: %v", m.Data, err)
		}
		return out, m.Header.Get(ErrorCodeHeader)
	}
	if out, code := req("keyd.cmd.permissions.define", `{"slug":"a:b","description":"d"}`); code != "" || out["sequence"] != 1.0 {
		t.Fatalf("define: %v %q", out, code)
	}
	if _, code := req("keyd.cmd.keys.org.create", `{"name":"`+strings.Repeat("x", commands.MaxBytes)+`"}`); code != domain.ETooLarge {
		t.Fatalf("oversized: %q", code)
	}
	out, code := req("keyd.cmd.keys.org.nope", `{}`)
	if code != domain.EInvalid || !strings.Contains(out["error"].(map[string]any)["message"].(string), "nope") {
		t.Fatalf("unknown command: %v %q", out, code)
	}
	// A publish without a reply subject is not run.
	if err := nc.Publish("keyd.cmd.keys.org.create", []byte(`{"name":"fire and forget"}`)); err != nil {
		t.Fatal(err)
	}
	_ = nc.Flush()
	if out, _ := req("keyd.cmd.keys.org.create", `{"name":"k"}`); out["sequence"] != 2.0 {
		t.Fatalf("a publish without reply appended an event: next create at %v", out["sequence"])
	}
	// Concurrent requests are all answered.
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, err := nc.Request("keyd.cmd.keys.org.create", []byte(`{"name":"k"}`), 10*time.Second)
			if err == nil && m.Header.Get(ErrorCodeHeader) != "" {
				err = context.Canceled
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent create: %v", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r.Stop(ctx)
	if last, _ := mem.LastSequence(ctx); last != 52 {
		t.Fatalf("stream holds %d events, want 52", last)
	}
}

// TestResponderLogsUnavailableAndInternalOnly: the responder is the NATS
// edge's one log of failed commands: an unavailable reply is logged, with its
// cause; an invalid request is the client's business and is not.
func TestResponderLogsUnavailableAndInternalOnly(t *testing.T) {
	t.Parallel()
	_, nc := testenv.JetStream(t)
	svc := &domain.Service{Store: eventstore.NewMemory(), Idempotency: eventstore.NewMemoryIdempotency(),
		Digester: domain.NewDigester([]byte("secret")), Now: time.Now, Rand: rand.Reader}
	logs := &testenv.SyncBuffer{}
	r := &Responder{Conn: nc, Log: slog.New(slog.NewTextHandler(logs, nil)), Runner: &commands.Runner{Service: svc,
		WaitApplied: func(context.Context, uint64) error { return errors.New("verifier lagging behind") }}}
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Stop(context.Background()) })
	req := func(subject, body string) string {
		t.Helper()
		m, err := nc.Request(subject, []byte(body), 5*time.Second)
		if err != nil {
			t.Fatalf("request %s: %v", subject, err)
		}
		return string(m.Data)
	}
	var created domain.CreateKeyResult
	if err := json.Unmarshal([]byte(req("keyd.cmd.keys.org.create", `{"name":"k"}`)), &created); err != nil || created.Key.ID == "" {
		t.Fatalf("create: %v", err)
	}
	req("keyd.cmd.keys.org.create", `{"name":5}`)
	if strings.Contains(logs.String(), "command failed") {
		t.Fatalf("an invalid request was logged: %s", logs)
	}
	if reply := req("keyd.cmd.keys.org.revoke", `{"key_id":"`+created.Key.ID+`"}`); !strings.Contains(reply, domain.EUnavailable) || strings.Contains(reply, "lagging") {
		t.Fatalf("revoke with a lagging verifier: %s", reply)
	}
	if l := logs.String(); strings.Count(l, "command failed") != 1 || !strings.Contains(l, "verifier lagging behind") || !strings.Contains(l, "keyd.cmd.keys.org.revoke") {
		t.Fatalf("want one log line for the unavailable revoke, with its cause:\n%s", l)
	}
}
