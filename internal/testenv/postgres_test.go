package testenv

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// childEnv makes the test binary a child of TestPrivateServer: "main" runs
// TestMain through Main, "nomain" runs m.Run without it.
const childEnv = "KEYD_TESTENV_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "nomain" {
		os.Exit(m.Run())
	}
	Main(m)
}

func connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect %s: %v", dsn, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func databaseExists(t *testing.T, admin, name string) bool {
	t.Helper()
	var n int
	if err := connect(t, admin).QueryRow(context.Background(),
		"SELECT count(*) FROM pg_database WHERE datname = $1", name).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n == 1
}

func TestPostgresURL(t *testing.T) {
	ctx := context.Background()
	var names []string
	for i := range 2 {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			dsn := PostgresURL(t)
			if !strings.HasPrefix(dsn, "postgres://") {
				t.Fatalf("DSN %q is not a postgres:// URL", dsn)
			}
			conn := connect(t, dsn)
			var name string
			var tables int
			if err := conn.QueryRow(ctx, "SELECT current_database(), (SELECT count(*) FROM pg_tables WHERE schemaname = 'public')").Scan(&name, &tables); err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(name, "keyd_t_") || tables != 0 {
				t.Fatalf("database %q with %d tables, want a new empty keyd_t_* database", name, tables)
			}
			if _, err := conn.Exec(ctx, "CREATE TABLE t (id int PRIMARY KEY)"); err != nil {
				t.Fatal(err)
			}
			names = append(names, name)
			t.Logf("database %s via %s", name, dsn)
		})
	}
	if len(names) != 2 || names[0] == names[1] {
		t.Fatalf("want two distinct databases, got %v", names)
	}
	admin := PostgresAdminURL(t)
	for _, name := range names {
		if databaseExists(t, admin, name) {
			t.Errorf("database %s still exists after its test's cleanup", name)
		}
	}
}

func TestPostgresURLParallel(t *testing.T) {
	for i := range 4 {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			t.Parallel()
			conn := connect(t, PostgresURL(t))
			if err := conn.Ping(context.Background()); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestPostgresAdminURL(t *testing.T) {
	conn := connect(t, PostgresAdminURL(t))
	var db string
	var canCreate bool
	if err := conn.QueryRow(context.Background(),
		"SELECT current_database(), rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user").Scan(&db, &canCreate); err != nil {
		t.Fatal(err)
	}
	if db != "postgres" || !canCreate {
		t.Fatalf("admin URL: database %q, may create databases: %v", db, canCreate)
	}
}

func TestWithDatabase(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://u:p@h:1/postgres?sslmode=disable": "postgres://u:p@h:1/x?sslmode=disable",
		"postgresql://h/other":                        "postgresql://h/x",
		"postgres://h":                                "postgres://h/x",
		"postgres://h/a?dbname=a&sslmode=disable":     "postgres://h/x?dbname=x&sslmode=disable",
	} {
		got, err := withDatabase(in, "x")
		if err != nil || got != want {
			t.Errorf("withDatabase(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := withDatabase("host=h dbname=postgres", "x"); err == nil {
		t.Error("withDatabase accepted a key=value DSN")
	}
}

// An explicit KEYD_TEST_DATABASE_URL that does not work is an error that
// names it, not a silent fallback.
func TestBadEnvURL(t *testing.T) {
	t.Setenv(EnvPrivatePG, "")
	t.Setenv(EnvDatabaseURL, "postgres://postgres:secret@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=2")
	_, err := findServer()
	if err == nil {
		t.Fatal("findServer succeeded with a server on port 1")
	}
	if !strings.Contains(err.Error(), EnvDatabaseURL) || strings.Contains(err.Error(), "secret") {
		t.Fatalf("error should name %s and hide the password: %v", EnvDatabaseURL, err)
	}
	t.Log(err)
}

// TestPrivateServer runs TestPrivateChild in a child test binary with
// KEYD_TEST_PRIVATE_PG=1, once with Main and once without, and checks that
// the private server is gone afterwards.
func TestPrivateServer(t *testing.T) {
	for _, mode := range []string{"main", "nomain"} {
		t.Run(mode, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestPrivateChild$", "-test.v", "-test.count=1")
			cmd.Env = append(os.Environ(), childEnv+"="+mode, EnvPrivatePG+"=1")
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			start := time.Now()
			if err := cmd.Run(); err != nil {
				t.Fatalf("child: %v\n%s", err, out.String())
			}
			t.Logf("child ran in %s", time.Since(start).Round(time.Millisecond))
			var dir string
			var pid int
			sc := bufio.NewScanner(&out)
			for sc.Scan() {
				if rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "PRIVATE "); ok {
					fmt.Sscanf(rest, "dir=%s pid=%d", &dir, &pid)
				}
			}
			if dir == "" || pid == 0 {
				t.Fatalf("child did not report its private server:\n%s", out.String())
			}
			if mode == "main" {
				if pidAlive(pid) {
					t.Errorf("postgres (pid %d) still running after Main", pid)
				}
				if _, err := os.Stat(dir); !os.IsNotExist(err) {
					t.Errorf("%s not removed by Main: %v", dir, err)
				}
				return
			}
			// Without Main, the kernel sends SIGINT when the child exits.
			if err := poll(30*time.Second, func() bool { return !pidAlive(pid) }); err != nil {
				t.Errorf("postgres (pid %d) still running after its test binary exited: %v", pid, err)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			os.RemoveAll(dir)
		})
	}
}

func TestPrivateChild(t *testing.T) {
	if os.Getenv(childEnv) == "" {
		return // only runs as a child of TestPrivateServer
	}
	dsn := PostgresURL(t)
	if strings.Contains(dsn, ":5432/") {
		t.Fatalf("KEYD_TEST_PRIVATE_PG=1 but got %s", dsn)
	}
	conn := connect(t, dsn)
	var fsync, user string
	if err := conn.QueryRow(context.Background(), "SELECT current_setting('fsync'), current_user").Scan(&fsync, &user); err != nil {
		t.Fatal(err)
	}
	if fsync != "off" || user != "postgres" {
		t.Fatalf("fsync=%s user=%s", fsync, user)
	}
	privateMu.Lock()
	dir := private.dir
	privateMu.Unlock()
	pid := readPid(filepath.Join(dir, "data", "postmaster.pid"))
	if os.Geteuid() == 0 {
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil || bytes.Contains(st, []byte("\nUid:\t0\t")) {
			t.Fatalf("postgres (pid %d) runs as root or is gone: %v", pid, err)
		}
	}
	fmt.Printf("PRIVATE dir=%s pid=%d\n", dir, pid)
	t.Logf("private server %s in %s", dsn, dir)
}
