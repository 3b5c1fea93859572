package main

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keyd-dev/keyd/internal/testenv"
)

// TestReadinessFollowsDependencies: /readyz turns 503 while Postgres refuses
// connections or NATS is down, and the verifier answers unavailable once it
// has been cut off longer than --verifier-max-staleness; both recover by
// themselves.
func TestReadinessFollowsDependencies(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	opts := testenv.JetStreamOptions(dir)
	ns := testenv.RunServer(t, opts)
	port := ns.Addr().(*net.TCPAddr).Port
	db := testenv.PostgresURL(t)
	r := MustStart(t, map[string]string{"KEYD_ADMIN_TOKEN": testToken, "KEYD_SECRET": testSecret},
		"serve", "--http", "127.0.0.1:0", "--nats-url", ns.ClientURL(), "--database-url", db,
		"--verifier-max-staleness", "500ms")
	base := "http://" + r.App.HTTPAddr
	ready := func(t *testing.T) int {
		t.Helper()
		st, _, _ := httpDo(t, "GET", base+"/readyz", "", nil)
		return st
	}
	var secret string
	verifyStatus := func(t *testing.T) (int, string) {
		t.Helper()
		st, out, _ := httpDo(t, "POST", base+"/v1/keys/verify", testToken, map[string]any{"key": secret})
		code, _ := out["code"].(string)
		if st != 200 {
			code = errCode(out)
		}
		return st, code
	}

	// Each step needs the ones before it: the first that fails ends the
	// scenario.
	if !t.Run("ready at start", func(t *testing.T) {
		testenv.WaitFor(t, 10*time.Second, "/readyz 200 at start", func() bool { return ready(t) == 200 })
		st, created, _ := httpDo(t, "POST", base+"/v1/orgs/acme/keys", testToken, map[string]any{"name": "k"})
		if st != 201 {
			t.Fatalf("create: %d %v", st, created)
		}
		secret = created["secret"].(string)
	}) {
		return
	}

	if !t.Run("unready while Postgres refuses connections", func(t *testing.T) {
		u, _ := url.Parse(db)
		dbName := strings.TrimPrefix(u.Path, "/")
		admin, err := pgx.Connect(context.Background(), testenv.PostgresAdminURL(t))
		if err != nil {
			t.Fatal(err)
		}
		defer admin.Close(context.Background())
		exec := func(sql string) {
			t.Helper()
			if _, err := admin.Exec(context.Background(), sql); err != nil {
				t.Fatal(err)
			}
		}
		exec(`ALTER DATABASE "` + dbName + `" ALLOW_CONNECTIONS false`)
		exec(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '` + dbName + `'`)
		testenv.WaitFor(t, 10*time.Second, "/readyz 503 while Postgres refuses connections", func() bool { return ready(t) == 503 })
		exec(`ALTER DATABASE "` + dbName + `" ALLOW_CONNECTIONS true`)
		testenv.WaitFor(t, 20*time.Second, "/readyz 200 once Postgres accepts connections again", func() bool { return ready(t) == 200 })
	}) {
		return
	}

	// NATS goes away: unready, and the verifier refuses verdicts after the
	// staleness bound rather than risk approving a revoked key.
	if !t.Run("unready and refusing verdicts while NATS is down", func(t *testing.T) {
		ns.Shutdown()
		ns.WaitForShutdown()
		testenv.WaitFor(t, 10*time.Second, "/readyz 503 while NATS is down", func() bool { return ready(t) == 503 })
		testenv.WaitFor(t, 10*time.Second, "verify to answer unavailable past the staleness bound", func() bool { st, code := verifyStatus(t); return st == 503 && code == "unavailable" })
	}) {
		return
	}

	// NATS comes back on the same port and data: everything recovers.
	opts2 := testenv.JetStreamOptions(dir)
	opts2.Port = port
	testenv.RunServer(t, opts2)
	t.Run("recovers once NATS is back", func(t *testing.T) {
		testenv.WaitFor(t, 30*time.Second, "/readyz 200 once NATS is back", func() bool { return ready(t) == 200 })
		if st, code := verifyStatus(t); st != 200 || code != "valid" {
			t.Fatalf("verify after NATS returned: %d %s", st, code)
		}
	})
}

// TestReadinessAfterPostgresBlip: two keyd on one database (a projection
// leader and a standby); Postgres refuses connections for a few seconds
// (long enough for a retry backoff to grow). Once it accepts them again,
// both answer /readyz 200 within a second (a standby's stale projector
// error does not keep it unready), and the read models resume within a
// second: a key created during the outage is listed.
func TestReadinessAfterPostgresBlip(t *testing.T) {
	t.Parallel()
	const bound = time.Second
	ns := testenv.RunServer(t, testenv.JetStreamOptions(t.TempDir()))
	db := testenv.PostgresURL(t)
	var ks []*running
	for range 2 {
		ks = append(ks, MustStart(t, map[string]string{"KEYD_ADMIN_TOKEN": testToken, "KEYD_SECRET": testSecret},
			"serve", "--http", "127.0.0.1:0", "--nats-url", ns.ClientURL(), "--database-url", db))
	}
	ready := func(k *running) int {
		st, _, _ := httpDo(t, "GET", "http://"+k.App.HTTPAddr+"/readyz", "", nil)
		return st
	}
	for i, k := range ks {
		testenv.WaitFor(t, 20*time.Second, fmt.Sprintf("keyd %d ready at start", i), func() bool { return ready(k) == 200 })
	}

	u, _ := url.Parse(db)
	dbName := strings.TrimPrefix(u.Path, "/")
	admin, err := pgx.Connect(context.Background(), testenv.PostgresAdminURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	exec := func(sql string) {
		t.Helper()
		if _, err := admin.Exec(context.Background(), sql); err != nil {
			t.Fatal(err)
		}
	}
	exec(`ALTER DATABASE "` + dbName + `" ALLOW_CONNECTIONS false`)
	exec(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '` + dbName + `'`)
	for i, k := range ks {
		testenv.WaitFor(t, 10*time.Second, fmt.Sprintf("keyd %d unready while Postgres refuses connections", i), func() bool { return ready(k) == 503 })
	}
	// Commands need no Postgres: a key created now is listed once the
	// projection resumes.
	st, created, _ := httpDo(t, "POST", "http://"+ks[0].App.HTTPAddr+"/v1/orgs/acme/keys", testToken, map[string]any{"name": "during the outage"})
	if st != 201 {
		t.Fatalf("create during the Postgres outage: %d %v", st, created)
	}
	seq := uint64(created["sequence"].(float64))
	time.Sleep(4 * time.Second) // a backoff of 1, 2, 4 s would now be at its third step
	exec(`ALTER DATABASE "` + dbName + `" ALLOW_CONNECTIONS true`)
	back := time.Now()

	readyAt := make([]time.Duration, len(ks))
	var appliedAt time.Duration
	for time.Since(back) < 30*time.Second && (appliedAt == 0 || slices.Contains(readyAt, 0)) {
		for i, k := range ks {
			if readyAt[i] == 0 && ready(k) == 200 {
				readyAt[i] = time.Since(back)
			}
		}
		if appliedAt == 0 && ks[0].App.Projector.Status().Applied >= seq && ks[1].App.Projector.Status().Applied >= seq {
			appliedAt = time.Since(back)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("after Postgres returned: /readyz 200 after %v; read models at the outage's create (seq %d) after %v; leaders %t %t",
		readyAt, seq, appliedAt, ks[0].App.Projector.Status().Leader, ks[1].App.Projector.Status().Leader)
	for i, d := range readyAt {
		if d == 0 || d > bound {
			st, body, _ := httpDo(t, "GET", "http://"+ks[i].App.HTTPAddr+"/readyz", "", nil)
			t.Errorf("keyd %d: /readyz 200 after %v, want within %s of Postgres's return (now %d %v)", i, d, bound, st, body)
		}
	}
	if appliedAt == 0 || appliedAt > bound {
		t.Errorf("the read models reached sequence %d %v after Postgres returned, want within %s", seq, appliedAt, bound)
	}
}
