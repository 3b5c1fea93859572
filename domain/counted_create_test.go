package domain_test

import (
	"testing"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/internal/testenv"
)

// TestCountedCreateTakeover: under max_active_keys (creates append
// org.keys_counted in the same batch), an idempotent create keeps issue
// 11's guarantees: a resend takes over a reservation whose key never
// appeared and makes that key; a slow first attempt landing after it
// answers the taker's key without a secret; and the key is counted once.
func TestCountedCreateTakeover(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	if _, err := e.svc.SetPolicy(e.ctx, "org", domain.SetPolicy{MaxActiveKeys: ptr[int64](3)}); err != nil {
		t.Fatal(err)
	}

	ghost := "key_01J0000000000000000000000Z"
	if _, ok, err := e.idem.Reserve(e.ctx, "org", "crashed", ghost, e.clk.Now()); err != nil || !ok {
		t.Fatalf("reserve: %v %v", ok, err)
	}
	taken := e.create("org", domain.CreateKey{Name: "n", IdempotencyKey: "crashed"})
	if taken.Key.ID != ghost || taken.Secret == "" {
		t.Errorf("resend = %s (secret %t), want the reserved key %s with its secret", taken.Key.ID, taken.Secret != "", ghost)
	}
	if again := e.create("org", domain.CreateKey{IdempotencyKey: "crashed"}); again.Key.ID != ghost || again.Secret != "" {
		t.Errorf("repeat after take-over = %s (secret %t), want %s without secret", again.Key.ID, again.Secret != "", ghost)
	}

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
	resend := e.create("org", domain.CreateKey{Name: "resend", IdempotencyKey: "race"})
	close(slow.resume)
	late := <-done
	if late.err != nil {
		t.Fatal(late.err)
	}
	if late.res.Key.ID != resend.Key.ID || late.res.Secret != "" || resend.Secret == "" {
		t.Errorf("late first attempt = %s (secret %t), resend = %s (secret %t): want one key, the secret only in the resend's reply",
			late.res.Key.ID, late.res.Secret != "", resend.Key.ID, resend.Secret != "")
	}

	// Two keys counted so far: one more fits, the next does not.
	e.create("org", domain.CreateKey{Name: "third"})
	_, err := e.svc.CreateKey(e.ctx, "org", domain.CreateKey{Name: "fourth"})
	wantErr(t, err, domain.EPrecondition, "max_active_keys (3)")
}
