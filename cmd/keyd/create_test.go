package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/keyd-dev/keyd/adapters/commands"
	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/internal/testenv"
)

// TestCreateThroughAProcess: what a create promises through a real keyd.
func TestCreateThroughAProcess(t *testing.T) {
	t.Parallel()
	r := MustStart(t, nil, devArgs(t.TempDir(), testenv.PostgresURL(t))...)
	nc := connect(t, r.App.NATSURL)
	mustOK(t, request(t, nc, "keyd.cmd.permissions.define", `{"slug":"posts:read","description":"Read posts"}`))

	// Read-your-create (issue 16 point 3): a key created through a process
	// verifies on that process as soon as the reply arrives, never
	// not_found; so does the new key of a rotate.
	t.Run("read your create", func(t *testing.T) {
		ctx := t.Context()
		for i := range 200 {
			created := mustOK(t, request(t, nc, "keyd.cmd.keys.org_ryc.create", `{"name":"k","permissions":["posts:read"]}`))
			secret, _ := created["secret"].(string)
			res, err := r.App.Verifier.Verify(ctx, secret, "posts:read")
			if err != nil || !res.Valid {
				t.Fatalf("create %d: verify right after the reply = %+v, %v; want valid", i, res, err)
			}
			if i%20 == 0 {
				id, _ := keyOf(created)["id"].(string)
				rotated := mustOK(t, request(t, nc, "keyd.cmd.keys.org_ryc.rotate", map[string]any{"key_id": id, "grace_period_seconds": 0}))
				secret, _ := rotated["secret"].(string)
				if res, err := r.App.Verifier.Verify(ctx, secret); err != nil || !res.Valid {
					t.Fatalf("rotate %d: verify of the new key right after the reply = %+v, %v; want valid", i, res, err)
				}
			}
		}
	})

	// Issue 11 P3: a create that reserved its command id and was killed
	// before it appended leaves a reservation; the client's resend with the
	// same Keyd-Command-Id must be answered within 2 s with the key, not
	// conflict until the reservation goes stale.
	t.Run("resend after a crash mid-command", func(t *testing.T) {
		ctx := t.Context()
		for i := range 5 {
			cmdID := fmt.Sprintf("crashed-create-%d", i)
			id, err := domain.NewULID(time.Now(), rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			ghost := domain.KeyIDPrefix + id
			// What the killed command left: its reservation, and no key.
			if _, ok, err := r.App.Service.Idempotency.Reserve(ctx, "org_p3", "keyd-command-id:"+cmdID, ghost, time.Now()); err != nil || !ok {
				t.Fatalf("reserve: %v, %v", ok, err)
			}
			m := nats.NewMsg("keyd.cmd.keys.org_p3.create")
			m.Header.Set(commands.CommandIDHeader, cmdID)
			m.Data = []byte(`{"name":"resent","permissions":["posts:read"]}`)
			start := time.Now()
			reply, err := nc.RequestMsg(m, 10*time.Second)
			took := time.Since(start)
			if err != nil {
				t.Fatal(err)
			}
			var out map[string]any
			if err := json.Unmarshal(reply.Data, &out); err != nil {
				t.Fatal(err)
			}
			mustOK(t, out)
			if took > 2*time.Second {
				t.Errorf("resend %d answered after %v, want within 2 s", i, took)
			}
			if got, _ := keyOf(out)["id"].(string); got != ghost || out["secret"] == "" || out["secret"] == nil {
				t.Fatalf("resend %d = %v, want the reserved key %s with its secret", i, out, ghost)
			}
			// Sent again: the same key, without a secret, nothing appended.
			before, _ := r.App.Store.LastSequence(context.Background())
			reply, err = nc.RequestMsg(m, 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			out = nil
			if err := json.Unmarshal(reply.Data, &out); err != nil {
				t.Fatal(err)
			}
			mustOK(t, out)
			after, _ := r.App.Store.LastSequence(context.Background())
			if got, _ := keyOf(out)["id"].(string); got != ghost || out["secret"] != nil || after != before {
				t.Fatalf("second resend %d = %v (stream %d -> %d), want %s without a secret and nothing appended", i, out, before, after, ghost)
			}
		}
	})
}
