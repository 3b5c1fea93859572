package natscmd

import (
	"context"
	"crypto/rand"
	"encoding/json"
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
	if _, code := req("keyd.cmd.keys.org.create", `{"name":"`+strings.Repeat("x", domain.MaxCommandBytes)+`"}`); code != domain.ETooLarge {
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
