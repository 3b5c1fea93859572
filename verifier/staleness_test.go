package verifier

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/internal/testenv"
)

// TestStaleness: cut off from the stream longer than MaxStaleness, the
// verifier answers unavailable; when the server is back (same store, same
// port) it recovers by itself and sees a revocation made after the restart.
func TestStaleness(t *testing.T) {
	t.Parallel()
	const maxStaleness = 300 * time.Millisecond
	dir := t.TempDir()
	srv := testenv.RunServer(t, testenv.JetStreamOptions(dir))
	port := srv.Addr().(*net.TCPAddr).Port
	nc, err := nats.Connect(srv.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	e := newEnvOn(t, srv, nc, nil)
	v := e.verifier(func(c *Config) { c.MaxStaleness = maxStaleness })
	k := e.create("org_1", domain.CreateKey{})
	if err := v.WaitApplied(e.ctx, k.Sequence); err != nil {
		t.Fatal(err)
	}
	if r := verify(t, v, k.Secret); r.Code != CodeValid {
		t.Fatalf("before the outage: %s", r.Code)
	}

	testenv.ShutdownServer(srv)
	down := time.Now()
	_, err = v.Verify(context.Background(), k.Secret)
	if time.Since(down) < maxStaleness/4 && err != nil {
		t.Errorf("Verify right after the server went down: %v, want a verdict (within MaxStaleness)", err)
	}
	testenv.WaitFor(t, 10*time.Second, "Verify to answer unavailable", func() bool {
		_, err := v.Verify(context.Background(), k.Secret)
		return domain.ErrorCode(err) == domain.EUnavailable
	})
	if took := time.Since(down); took < maxStaleness-v.probeEvery-10*time.Millisecond {
		t.Errorf("unavailable %s after the server went down, before MaxStaleness %s", took, maxStaleness)
	}
	if s := v.Status(); !s.Stale || s.Ready || s.SinceContact <= maxStaleness {
		t.Errorf("Status during the outage = %+v, want stale", s)
	}

	opts := testenv.JetStreamOptions(dir)
	opts.Port = port
	testenv.RunServer(t, opts)

	// Revoke after the restart; the command side retries while JetStream
	// recovers the stream.
	var seq uint64
	testenv.WaitFor(t, 30*time.Second, "the revoke to be accepted after the restart", func() bool {
		ctx, cancel := context.WithTimeout(e.ctx, 2*time.Second)
		defer cancel()
		r, err := e.svc.RevokeKey(ctx, "org_1", domain.RevokeKey{KeyID: k.Key.ID})
		seq = r.Sequence
		return err == nil
	})
	recovered := time.Now()
	testenv.WaitFor(t, 30*time.Second, "the verifier to recover and see the revocation", func() bool {
		r, err := v.Verify(context.Background(), k.Secret)
		return err == nil && r.Code == CodeRevoked
	})
	t.Logf("verifier answered revoked %s after the revoke was accepted", time.Since(recovered).Round(time.Millisecond))
	if s := v.Status(); !s.Ready || s.Stale || s.Applied < seq {
		t.Errorf("Status after recovery = %+v", s)
	}
}

// TestContactProbes checks the contact bookkeeping: a probe proves contact
// only once the verifier has applied what the probe saw.
func TestContactProbes(t *testing.T) {
	t.Parallel()
	var c contact
	c.init()
	c.advanced(5)
	c.observed(time.Second, 5) // caught up: contact at 1s
	if got := time.Duration(c.last.Load()); got != time.Second {
		t.Fatalf("last = %s, want 1s", got)
	}
	c.observed(2*time.Second, 7) // behind
	c.observed(3*time.Second, 9)
	if got := time.Duration(c.last.Load()); got != time.Second {
		t.Fatalf("last = %s before applying 7, want 1s", got)
	}
	c.advanced(8)
	if got := time.Duration(c.last.Load()); got != 2*time.Second {
		t.Fatalf("last = %s after applying 8, want 2s", got)
	}
	c.advanced(9)
	if got := time.Duration(c.last.Load()); got != 3*time.Second || len(c.pending) != 0 {
		t.Fatalf("last = %s after applying 9 (pending %v), want 3s", got, c.pending)
	}
	for i := range 2 * maxPendingProbes {
		c.observed(time.Duration(10+i)*time.Second, uint64(100+i))
	}
	if len(c.pending) != maxPendingProbes {
		t.Fatalf("pending = %d, want at most %d", len(c.pending), maxPendingProbes)
	}
}
