package projections

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/eventstore"
	"github.com/keyd-dev/keyd/internal/testenv"
)

func TestProjectorFollowsTheStream(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.history("org_a", 8) // before the projector starts: catch-up
	p := e.projector(e.pool)
	e.start(p)
	e.caughtUp(p)
	e.history("org_b", 8) // while it runs: live
	e.rotate("org_b", e.create("org_b", "late", nil, nil).Key.ID, 0)
	e.caughtUp(p)

	s := p.Status()
	last := e.lastSeq()
	if !s.Leader || s.Applied != last || s.StreamLast != last || s.LagEvents != 0 || s.LagSeconds != 0 || s.Err != nil {
		t.Errorf("Status = %+v, want leader, applied = stream last = %d, no lag, no error", s, last)
	}
	// The live projection equals one ApplyBatch of the whole stream.
	scratch := e.scratchTables("_scratch")
	e.apply(scratch, e.records(1, last))
	if got, want := e.dump(DefaultTables), e.dump(scratch); got != want {
		t.Errorf("live projection:\n%s\nwant:\n%s", got, want)
	}
}

func TestProjectorStopsAtAnEventItCannotApply(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		live bool // publish the bad event while the projector runs
		data func(good []byte) []byte
	}{
		{"not JSON, during catch-up", false, func([]byte) []byte { return []byte("{garbage") }},
		{"no key state, live", true, func(good []byte) []byte {
			var m map[string]json.RawMessage
			if err := json.Unmarshal(good, &m); err != nil {
				panic(err)
			}
			m["data"] = json.RawMessage(`{"reason":"lost"}`)
			b, _ := json.Marshal(m)
			return b
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			c := e.create("org_a", "good", nil, nil)
			e.revoke("org_a", c.Key.ID)
			p := e.projector(e.pool)
			var r *running
			if tc.live {
				r = e.start(p)
				e.caughtUp(p)
			}
			good := e.records(c.Sequence, c.Sequence)[0]
			ack, err := e.js.Publish(e.ctx, good.Subject, tc.data(good.Data))
			if err != nil {
				t.Fatal(err)
			}
			bad := ack.Sequence
			after := e.create("org_a", "after", nil, nil) // must not be applied
			if !tc.live {
				r = e.start(p)
			}
			err2 := r.wait(t, 20*time.Second)
			var ee *EventError
			if !errors.As(err2, &ee) || ee.Seq != bad {
				t.Fatalf("Run = %v, want an *EventError at sequence %d", err2, bad)
			}
			s := p.Status()
			if !errors.As(s.Err, &ee) || ee.Seq != bad || s.Leader {
				t.Errorf("Status = %+v, want the *EventError and not leading", s)
			}
			if got := e.checkpoint("read_models"); got != bad-1 {
				t.Errorf("checkpoint = %d, want %d (just before the bad event)", got, bad-1)
			}
			if got := e.count(`SELECT count(*) FROM audit_events`); got != 2 {
				t.Errorf("%d audit rows, want the 2 events before the bad one", got)
			}
			if got := e.count(`SELECT count(*) FROM keys WHERE key_id = $1`, after.Key.ID); got != 0 {
				t.Error("an event after the bad one was applied")
			}
			// Running again stops at the same place: nothing is skipped.
			ctx, cancel := context.WithTimeout(e.ctx, 20*time.Second)
			defer cancel()
			if err := e.projector(e.pool).Run(ctx); !errors.As(err, &ee) || ee.Seq != bad {
				t.Errorf("second Run = %v, want an *EventError at %d", err, bad)
			}
			if got := e.checkpoint("read_models"); got != bad-1 {
				t.Errorf("checkpoint after a second Run = %d, want %d", got, bad-1)
			}
		})
	}
}

func TestProjectorStopsWhenTheCheckpointDoesNotFitTheStream(t *testing.T) {
	t.Parallel()
	t.Run("gap", func(t *testing.T) {
		cfg := eventstore.StreamConfig(1)
		cfg.DenyPurge = false
		e := newEnvWithStream(t, cfg)
		e.history("org_a", 3)
		if err := e.stream.Purge(e.ctx, jetstream.WithPurgeSequence(4)); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(e.ctx, 20*time.Second)
		defer cancel()
		p := e.projector(e.pool)
		if err := p.Run(ctx); !errors.Is(err, eventstore.ErrGap) {
			t.Fatalf("Run = %v, want ErrGap", err)
		}
		if !errors.Is(p.Status().Err, eventstore.ErrGap) || e.checkpoint("read_models") != 0 {
			t.Errorf("Status = %+v, checkpoint %d", p.Status(), e.checkpoint("read_models"))
		}
	})
	t.Run("ahead", func(t *testing.T) {
		e := newEnv(t)
		e.history("org_a", 1)
		if _, err := e.pool.Exec(e.ctx, `INSERT INTO projection_checkpoints (name, last_seq) VALUES ('read_models', 1000)`); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(e.ctx, 20*time.Second)
		defer cancel()
		if err := e.projector(e.pool).Run(ctx); !errors.Is(err, eventstore.ErrCheckpointAhead) {
			t.Fatalf("Run = %v, want ErrCheckpointAhead", err)
		}
	})
}

func TestProjectorFailover(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// Two "processes": separate pools, separate projectors.
	p1, p2 := e.projector(e.newPool()), e.projector(e.newPool())
	r1, r2 := e.start(p1), e.start(p2)
	testenv.WaitFor(t, 10*time.Second, "a leader", func() bool { return p1.Status().Leader || p2.Status().Leader })

	// While nobody is being stopped, never two leaders.
	var both atomic.Bool
	sampling, stopSampling := context.WithCancel(e.ctx)
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for sampling.Err() == nil {
			if p1.Status().Leader && p2.Status().Leader {
				both.Store(true)
			}
			time.Sleep(time.Millisecond)
		}
	}()

	e.history("org_a", 10)
	leader, standby, leaderRun := p1, p2, r1
	if p2.Status().Leader {
		leader, standby, leaderRun = p2, p1, r2
	}
	e.caughtUp(leader)
	if s := standby.Status(); s.Leader || s.StreamLast != 0 {
		t.Errorf("standby Status = %+v", s)
	}
	testenv.WaitFor(t, 5*time.Second, "the standby to see the checkpoint", func() bool { return standby.Status().Applied == e.lastSeq() })
	stopSampling()
	<-sampled
	if both.Load() {
		t.Error("both projectors led at once")
	}

	// Events appended while the leader goes away.
	var more []string
	for i := range 5 {
		more = append(more, e.create("org_b", fmt.Sprint("during ", i), nil, nil).Key.ID)
	}
	leaderRun.stop(t)
	if leader.Status().Leader {
		t.Error("a stopped projector still says it leads")
	}
	testenv.WaitFor(t, 10*time.Second, "the standby to take over", func() bool { return standby.Status().Leader })
	for _, id := range more {
		e.revoke("org_b", id)
	}
	e.caughtUp(standby)

	last := e.lastSeq()
	scratch := e.scratchTables("_scratch")
	e.apply(scratch, e.records(1, last))
	if got, want := e.dump(DefaultTables), e.dump(scratch); got != want {
		t.Errorf("after failover:\n%s\nwant:\n%s", got, want)
	}
	var keyEvents int
	for _, r := range e.records(1, last) {
		if strings.HasPrefix(r.Subject, "keyd.events.keys.") {
			keyEvents++
		}
	}
	if got := e.count(`SELECT count(*) FROM audit_events`); got != keyEvents {
		t.Errorf("%d audit rows, want one per key event (%d)", got, keyEvents)
	}
}

func TestProjectorStepsDownWhenItsLockConnectionDies(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := e.projector(e.pool)
	e.start(p)
	testenv.WaitFor(t, 10*time.Second, "leadership", func() bool { return p.Status().Leader })
	e.history("org_a", 3)
	e.caughtUp(p)

	p.mu.Lock()
	pid := p.lockPID
	p.mu.Unlock()
	var killed bool
	if err := e.pool.QueryRow(e.ctx, `SELECT pg_terminate_backend($1)`, int32(pid)).Scan(&killed); err != nil || !killed {
		t.Fatalf("terminating the lock connection %d: %v %v", pid, killed, err)
	}
	// It notices, stands by, and leads again on a new lock connection.
	testenv.WaitFor(t, 10*time.Second, "leadership on a new lock connection", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.status.Leader && p.lockPID != 0 && p.lockPID != pid
	})
	e.history("org_b", 3)
	e.caughtUp(p)
	if got := p.Status(); got.Err != nil || got.LagEvents != 0 {
		t.Errorf("Status = %+v", got)
	}
}

func TestProjectorLagWhileBehind(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.history("org_a", 4)
	p := e.projector(e.pool)
	p.BatchSize = 1
	p.Now = func() time.Time { return time.Now().Add(time.Hour) } // an hour later
	e.start(p)
	var sawLag atomic.Bool
	testenv.WaitFor(t, 20*time.Second, "lag to show and then clear", func() bool {
		s := p.Status()
		if s.LagEvents > 0 && s.LagSeconds > 3000 {
			sawLag.Store(true)
		}
		return s.Applied == e.lastSeq()
	})
	if !sawLag.Load() {
		t.Error("never saw lag in events and seconds while catching up one event per batch")
	}
	if s := p.Status(); s.LagEvents != 0 || s.LagSeconds != 0 {
		t.Errorf("caught up, Status = %+v", s)
	}
}

// TestNoSecretInAnyTable creates keys with known secrets and searches a
// dump of every row of every table for them.
func TestNoSecretInAnyTable(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	secrets := e.history("org_a", 8)
	p := e.projector(e.pool)
	e.start(p)
	e.caughtUp(p)

	tables := e.rows(`SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) FROM information_schema.tables
 WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_type = 'BASE TABLE'`)
	var dump strings.Builder
	for _, tbl := range tables {
		for _, row := range e.rows(`SELECT row_to_json(t)::text FROM ` + tbl + ` t`) {
			dump.WriteString(row)
			dump.WriteByte('\n')
		}
	}
	d := dump.String()
	if len(secrets) < 8 || !strings.Contains(d, "posts:read") {
		t.Fatalf("the dump looks empty (%d secrets, %d bytes)", len(secrets), len(d))
	}
	for _, s := range secrets {
		body := s[strings.IndexByte(s, '_')+1:]
		for _, needle := range []string{s, body, body[:20], body[20:40]} {
			if strings.Contains(d, needle) {
				t.Errorf("a secret (or a 20-character piece of one) is in the read models: %q", needle)
			}
		}
		if dg := e.dg.Digest(s); !strings.Contains(d, fmt.Sprintf("%x", dg[:])) {
			t.Errorf("the digest of a secret is not in the dump: the search may be wrong")
		}
	}
}
