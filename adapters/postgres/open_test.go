package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keyd-dev/keyd/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// newDatabaseURL returns a URL, with a password, for a database that does not
// exist yet on the test server, and drops that database after the test.
func newDatabaseURL(t *testing.T, prefix string) (dsn, name string) {
	t.Helper()
	admin := testenv.PostgresAdminURL(t)
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	// Upper case and a dash: the name must be quoted to survive.
	name = prefix + "-Open_" + hex.EncodeToString(b)
	u, err := url.Parse(admin)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	u.User = url.UserPassword(u.User.Username(), "n0t-a-real-pass")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, admin)
		if err != nil {
			t.Errorf("drop %s: %v", name, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Errorf("drop %s: %v", name, err)
		}
	})
	return u.String(), name
}

func TestOpenCreatesMissingDatabase(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	dsn, name := newDatabaseURL(t, "keyd_t")

	pool, err := Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	var got string
	if err := pool.QueryRow(ctx, "SELECT current_database()").Scan(&got); err != nil {
		t.Fatal(err)
	}
	pool.Close()
	if got != name {
		t.Fatalf("connected to %q, want %q", got, name)
	}

	// Existing now: opened as is.
	pool, err = Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	pool.Close()
}

func TestOpenConcurrentCreate(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	dsn, _ := newDatabaseURL(t, "keyd_t")
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() {
			pool, err := Open(ctx, dsn)
			if err == nil {
				err = pool.Ping(ctx)
				pool.Close()
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Open %d: %v", i, err)
		}
	}
}

func TestOpenNoServer(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close() // nothing listens there now

	addr := "127.0.0.1:" + strconv.Itoa(port)
	_, err = Open(ctx, "postgres://keyd:hunter2secret@"+addr+"/keyd?sslmode=disable")
	if err == nil {
		t.Fatal("Open succeeded with no server")
	}
	msg := err.Error()
	for _, want := range []string{addr, "KEYD_DATABASE_URL", "./scripts/dev.sh"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not mention %q", msg, want)
		}
	}
	if strings.Contains(msg, "hunter2secret") {
		t.Errorf("error %q contains the password", msg)
	}
}

func TestOpenErrorsHidePassword(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	admin, err := url.Parse(testenv.PostgresAdminURL(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, dsn := range []string{
		"postgres://keyd:topsecretpw@127.0.0.1:notaport/keyd",
		"postgres://nobody_role_x:topsecretpw@" + admin.Host + "/keyd?sslmode=disable",
		"postgres://keyd@" + admin.Host + "/keyd?sslmode=disable&password=topsecretpw&bogus_param=1&connect_timeout=x",
	} {
		_, err := Open(ctx, dsn)
		if err == nil {
			t.Errorf("Open(%s) succeeded", dsn)
			continue
		}
		if strings.Contains(err.Error(), "topsecretpw") {
			t.Errorf("error %q contains the password", err)
		}
		if strings.Contains(err.Error(), "KEYD_DATABASE_URL, or start") {
			t.Errorf("error %q blames a missing server, but the server answered or the URL is bad", err)
		}
	}
}
