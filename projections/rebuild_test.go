package projections

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyd-dev/keyd/domain"
)

// schemaNames lists the live tables' index and constraint names.
func (e *env) schemaNames() []string {
	e.t.Helper()
	return e.rows(`SELECT tablename || ' index ' || indexname FROM pg_indexes
 WHERE schemaname = current_schema() AND tablename = ANY($1)
UNION ALL
SELECT conrelid::regclass::text || ' constraint ' || conname FROM pg_constraint
 WHERE conrelid::regclass::text = ANY($1)
ORDER BY 1`, DefaultTables.list())
}

func (e *env) leftovers() []string {
	e.t.Helper()
	return e.rows(`SELECT tablename FROM pg_tables WHERE schemaname = current_schema()
 AND (tablename LIKE '%\_rebuild' OR tablename LIKE '%\_old' OR tablename LIKE '%\_rebuild\_%')
UNION ALL SELECT 'checkpoint ' || name FROM projection_checkpoints WHERE name <> 'read_models'`)
}

var progressLine = regexp.MustCompile(`^rebuild: \d+/\d+ events \(\d+%\), \d+ events/s, (about \S+ left|done in \S+)$`)

func checkProgress(t *testing.T, out string, events int) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	final := fmt.Sprintf("rebuild: %d/%d events (100%%)", events, events)
	var sawFinal bool
	for _, l := range lines {
		if strings.HasPrefix(l, "rebuild: waiting") || strings.HasPrefix(l, "rebuild: swapped in") {
			continue
		}
		if !progressLine.MatchString(l) {
			t.Errorf("progress line %q does not have the documented shape", l)
		}
		sawFinal = sawFinal || strings.HasPrefix(l, final)
	}
	if !sawFinal || !strings.Contains(out, "rebuild: swapped in the rebuilt read models at stream sequence") {
		t.Errorf("progress output lacks %q or the swap line:\n%s", final, out)
	}
}

func TestRebuild(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.history("org_a", 16)
	p := e.projector(e.pool)
	e.start(p)
	e.caughtUp(p)

	// last_used_at is not in any event: the rebuild carries it over.
	used := e.create("org_a", "used", nil, nil).Key.ID
	e.caughtUp(p)
	if _, err := e.pool.Exec(e.ctx, `UPDATE keys SET last_used_at = now() WHERE key_id = $1`, used); err != nil {
		t.Fatal(err)
	}
	names := e.schemaNames()
	if !slices.Contains(names, "keys index keys_org_key_id") || !slices.Contains(names, "verification_keys constraint verification_keys_key_id_key") {
		t.Fatalf("unexpected schema names before the rebuild: %v", names)
	}
	before := e.dump(DefaultTables)

	// 1. A quiet stream: the rebuilt tables equal the live ones, row for row,
	// with the same checkpoint. The live projector runs all along: it must
	// yield its lock, or Rebuild would wait forever.
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(e.ctx, time.Minute)
	defer cancel()
	if err := Rebuild(ctx, e.pool, e.js, testEventKey, &out); err != nil {
		t.Fatalf("Rebuild: %v\n%s", err, out.String())
	}
	if after := e.dump(DefaultTables); after != before {
		t.Errorf("rebuilt tables differ from the live projection:\n%s\nbefore:\n%s", after, before)
	}
	if got := e.schemaNames(); !slices.Equal(got, names) {
		t.Errorf("index and constraint names after a rebuild:\n%v\nwant\n%v", got, names)
	}
	if l := e.leftovers(); len(l) > 0 {
		t.Errorf("leftovers after a rebuild: %v", l)
	}
	checkProgress(t, out.String(), int(e.lastSeq()))
	t.Logf("rebuild output:\n%s", out.String())

	// The projector resumes on the new tables.
	e.history("org_b", 4)
	e.caughtUp(p)

	// 2. A second rebuild while commands keep appending events.
	var (
		wg      sync.WaitGroup
		stop    = make(chan struct{})
		mu      sync.Mutex
		created int
		werr    error
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			c, err := e.svc.CreateKey(e.ctx, "org_c", domain.CreateKey{Name: fmt.Sprint("during rebuild ", i)})
			if err == nil && i%2 == 0 {
				_, err = e.svc.RevokeKey(e.ctx, "org_c", domain.RevokeKey{KeyID: c.Key.ID})
			}
			mu.Lock()
			created++
			if err != nil && werr == nil {
				werr = err
			}
			mu.Unlock()
			time.Sleep(2 * time.Millisecond)
		}
	}()
	time.Sleep(50 * time.Millisecond)
	out.Reset()
	err := Rebuild(ctx, e.pool, e.js, testEventKey, &out)
	close(stop)
	wg.Wait()
	if err != nil || werr != nil {
		t.Fatalf("second Rebuild: %v; writer: %v\n%s", err, werr, out.String())
	}
	t.Logf("second rebuild, %d keys created meanwhile:\n%s", created, out.String())
	e.caughtUp(p)

	// The result equals a projection of the whole stream from scratch, plus
	// the carried-over last_used_at.
	scratch := e.scratchTables("_scratch")
	e.apply(scratch, e.records(1, e.lastSeq()))
	if _, err := e.pool.Exec(e.ctx, `UPDATE keys_scratch s SET last_used_at = k.last_used_at FROM keys k WHERE k.key_id = s.key_id`); err != nil {
		t.Fatal(err)
	}
	if got, want := e.dump(DefaultTables), e.dump(scratch); got != want {
		t.Errorf("after a rebuild under load:\n%s\nwant:\n%s", got, want)
	}
	if e.count(`SELECT count(*) FROM keys WHERE key_id = $1 AND last_used_at IS NOT NULL`, used) != 1 {
		t.Error("last_used_at was lost")
	}
	if _, err := e.pool.Exec(e.ctx, `DROP TABLE keys_scratch, audit_events_scratch, permissions_scratch, verification_keys_scratch;
DELETE FROM projection_checkpoints WHERE name = 'read_models_scratch'`); err != nil {
		t.Fatal(err)
	}
	if got := e.schemaNames(); !slices.Equal(got, names) {
		t.Errorf("index and constraint names after a second rebuild:\n%v\nwant\n%v", got, names)
	}
	if l := e.leftovers(); len(l) > 0 {
		t.Errorf("leftovers after the second rebuild: %v", l)
	}
}

func TestRebuildLeavesTheLiveTablesAloneOnFailure(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.history("org_a", 4)
	e.apply(DefaultTables, e.records(1, e.lastSeq()))
	before := e.dump(DefaultTables)
	// An event nobody can apply: the rebuild stops before swapping.
	if _, err := e.js.Publish(e.ctx, domain.CatalogSubject, []byte(`{"id":"x","type":"permission.defined","data":"nope"}`)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(e.ctx, time.Minute)
	defer cancel()
	var out bytes.Buffer
	err := Rebuild(ctx, e.pool, e.js, testEventKey, &out)
	var ee *EventError
	if !errors.As(err, &ee) || ee.Seq != e.lastSeq() {
		t.Fatalf("Rebuild = %v, want an *EventError at %d", err, e.lastSeq())
	}
	if after := e.dump(DefaultTables); after != before {
		t.Errorf("a failed rebuild changed the live tables")
	}

	// A later rebuild drops the leftovers of the failed one (and fails
	// again here, at the same event).
	if err := Rebuild(ctx, e.pool, e.js, testEventKey, &out); !errors.As(err, &ee) {
		t.Fatalf("second Rebuild = %v", err)
	}
}

func TestOnlyOneRebuildAtATime(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	conn, err := e.pool.Acquire(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(e.ctx, `SELECT pg_advisory_lock($1)`, rebuildLockKey); err != nil {
		t.Fatal(err)
	}
	err = Rebuild(e.ctx, e.pool, e.js, testEventKey, nil)
	if err == nil || !strings.Contains(err.Error(), "another rebuild is running") {
		t.Errorf("Rebuild while another runs = %v", err)
	}
	if _, err := conn.Exec(e.ctx, `SELECT pg_advisory_unlock($1)`, rebuildLockKey); err != nil {
		t.Fatal(err)
	}
	// An empty stream rebuilds to empty tables at checkpoint 0.
	if err := Rebuild(e.ctx, e.pool, e.js, testEventKey, nil); err != nil {
		t.Fatalf("Rebuild of an empty stream: %v", err)
	}
	if got := e.checkpoint("read_models"); got != 0 {
		t.Errorf("checkpoint = %d", got)
	}
}
