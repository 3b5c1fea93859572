package migrations

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keyd-dev/keyd/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func newPool(t *testing.T, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func embeddedVersions(t *testing.T) []string {
	t.Helper()
	all, err := load(files)
	if err != nil {
		t.Fatal(err)
	}
	var v []string
	for _, m := range all {
		v = append(v, m.version)
	}
	if len(v) == 0 || v[0] != "0001_read_models" {
		t.Fatalf("embedded migrations = %v, want 0001_read_models first", v)
	}
	return v
}

func TestApplyFreshThenNoop(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	pool := newPool(t, testenv.PostgresURL(t))
	want := embeddedVersions(t)

	applied, err := Apply(ctx, pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(applied, want) {
		t.Fatalf("applied %v, want %v", applied, want)
	}
	for _, table := range []string{"schema_migrations", "projection_checkpoints", "keys", "audit_events", "permissions", "verification_keys"} {
		var ok bool
		if err := pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", "public."+table).Scan(&ok); err != nil {
			t.Fatal(err)
		}
		if !ok {
			t.Errorf("table %s missing after Apply", table)
		}
	}
	var n int
	var sum string
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM schema_migrations").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != len(want) {
		t.Fatalf("schema_migrations has %d rows, want %d", n, len(want))
	}
	if err := pool.QueryRow(ctx, "SELECT checksum FROM schema_migrations WHERE version = '0001_read_models'").Scan(&sum); err != nil {
		t.Fatal(err)
	}
	if len(sum) != 64 {
		t.Fatalf("checksum %q is not a hex SHA-256", sum)
	}

	again, err := Apply(ctx, pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(again) != 0 {
		t.Fatalf("second Apply applied %v, want nothing", again)
	}
}

func TestApplyConcurrentProcesses(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	url := testenv.PostgresURL(t)
	want := embeddedVersions(t)

	const procs = 4
	pools := make([]*pgxpool.Pool, procs)
	for i := range pools {
		pools[i] = newPool(t, url)
		if err := pools[i].Ping(ctx); err != nil { // connect before the race starts
			t.Fatal(err)
		}
	}
	var (
		wg    sync.WaitGroup
		start = make(chan struct{})
		got   = make([][]string, procs)
		errs  = make([]error, procs)
	)
	for i := range procs {
		wg.Go(func() {
			<-start
			got[i], errs[i] = Apply(ctx, pools[i], nil)
		})
	}
	close(start)
	wg.Wait()

	var all []string
	for i := range procs {
		if errs[i] != nil {
			t.Fatalf("process %d: %v", i, errs[i])
		}
		all = append(all, got[i]...)
	}
	slices.Sort(all)
	if !slices.Equal(all, want) {
		t.Fatalf("applied across processes %v, want each of %v exactly once", all, want)
	}
	var n int
	if err := pools[0].QueryRow(ctx, "SELECT count(*) FROM schema_migrations").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != len(want) {
		t.Fatalf("schema_migrations has %d rows, want %d", n, len(want))
	}
	// The lock was released: another run does not hang.
	if _, err := Apply(ctx, pools[1], nil); err != nil {
		t.Fatal(err)
	}
}

func TestApplyChangedFileIsAnError(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	pool := newPool(t, testenv.PostgresURL(t))

	v1 := fstest.MapFS{
		"0001_a.sql": {Data: []byte("CREATE TABLE a (id int);")},
	}
	if _, err := apply(ctx, pool, nil, v1); err != nil {
		t.Fatal(err)
	}
	v2 := fstest.MapFS{
		"0001_a.sql": {Data: []byte("CREATE TABLE a (id bigint);")},
		"0002_b.sql": {Data: []byte("CREATE TABLE b (id int);")},
	}
	applied, err := apply(ctx, pool, nil, v2)
	if err == nil {
		t.Fatalf("Apply with a changed 0001_a.sql succeeded (applied %v)", applied)
	}
	if !strings.Contains(err.Error(), "0001_a.sql") || !strings.Contains(err.Error(), "changed") {
		t.Fatalf("error %q does not name the changed file", err)
	}
	var exists bool
	if err := pool.QueryRow(ctx, "SELECT to_regclass('public.b') IS NOT NULL").Scan(&exists); err != nil {
		t.Fatal(err)
	}
	if exists {
		t.Fatal("0002_b.sql was applied although an earlier file had changed")
	}
}

func TestApplyFailingFileRollsBackAndStops(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	pool := newPool(t, testenv.PostgresURL(t))

	bad := fstest.MapFS{
		"0001_a.sql": {Data: []byte("CREATE TABLE a (id int);")},
		"0002_b.sql": {Data: []byte("CREATE TABLE b (id int); CREATE TABLE oops (;")},
		"0003_c.sql": {Data: []byte("CREATE TABLE c (id int);")},
	}
	applied, err := apply(ctx, pool, nil, bad)
	if err == nil || !strings.Contains(err.Error(), "0002_b.sql") {
		t.Fatalf("err = %v, want an error naming 0002_b.sql", err)
	}
	if !slices.Equal(applied, []string{"0001_a"}) {
		t.Fatalf("applied %v, want [0001_a]", applied)
	}
	for table, want := range map[string]bool{"a": true, "b": false, "c": false} {
		var exists bool
		if err := pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", "public."+table).Scan(&exists); err != nil {
			t.Fatal(err)
		}
		if exists != want {
			t.Errorf("table %s exists = %v, want %v", table, exists, want)
		}
	}

	fixed := fstest.MapFS{
		"0001_a.sql": bad["0001_a.sql"],
		"0002_b.sql": {Data: []byte("CREATE TABLE b (id int);")},
		"0003_c.sql": bad["0003_c.sql"],
	}
	applied, err = apply(ctx, pool, nil, fixed)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(applied, []string{"0002_b", "0003_c"}) {
		t.Fatalf("applied %v, want [0002_b 0003_c]", applied)
	}
}

func TestApplyRespectsContextWhileWaitingForLock(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	url := testenv.PostgresURL(t)
	holder := newPool(t, url)
	conn, err := holder.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", lockID); err != nil {
		t.Fatal(err)
	}
	defer conn.Exec(context.Background(), "SELECT pg_advisory_unlock($1)", lockID)

	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, err := Apply(short, newPool(t, url), nil); err == nil {
		t.Fatal("Apply succeeded while another process held the migration lock")
	}
}
