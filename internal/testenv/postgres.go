// Package testenv gives tests the external services keyd needs: a fresh
// PostgreSQL database per test and in-process NATS JetStream servers (one, or
// a 3-node cluster, and StreamReady for a stream just created on it). It
// also holds the small helpers every package's tests share: WaitFor, Logger,
// LockedRand and SyncBuffer. It imports no keyd package, so any package's
// internal tests may use it; keyd-level worlds (a migrated database, the
// event stream, a wired service) are in internal/testworld.
//
// PostgreSQL comes from, in order:
//
//  1. KEYD_TEST_DATABASE_URL: a postgres:// URL to a server where that user may
//     create databases (./scripts/test.sh sets it).
//  2. postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable, if it answers
//     and the user may create databases.
//  3. A private server started once per test binary from the Debian packages
//     (/usr/lib/postgresql/*/bin), in a temporary directory, on a free port.
//
// Set KEYD_TEST_PRIVATE_PG=1 to skip 1 and 2 and always use a private server.
//
// A private server is stopped by Main (call it from TestMain); without it, the
// server gets SIGINT from the kernel when the test binary exits, and its
// leftover temporary directory is removed by the next test binary that starts
// one.
package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

const (
	// EnvDatabaseURL names a server (not a database) that tests create their
	// databases on.
	EnvDatabaseURL = "KEYD_TEST_DATABASE_URL"
	// EnvPrivatePG, set to 1, forces a private server started by this package.
	EnvPrivatePG = "KEYD_TEST_PRIVATE_PG"
	// DefaultAdminURL is the local server tried when EnvDatabaseURL is unset.
	DefaultAdminURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
)

var (
	adminOnce sync.Once
	adminURL  string // server DSN, database "postgres"
	adminErr  error

	privateMu sync.Mutex
	private   *pgServer
)

// PostgresURL creates a new, empty database named keyd_t_<random> for this
// test and returns its postgres:// URL. The database is dropped in t.Cleanup
// (best effort).
func PostgresURL(t testing.TB) string {
	t.Helper()
	admin := PostgresAdminURL(t)
	name := "keyd_t_" + randomHex(8)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Fatalf("testenv: connect to %s: %v", redact(admin), err)
	}
	defer conn.Close(context.Background())
	// template0 is never connected to, so concurrent CREATE DATABASE calls
	// cannot fail with "source database is being accessed by other users".
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+" TEMPLATE template0"); err != nil {
		t.Fatalf("testenv: create database %s on %s: %v", name, redact(admin), err)
	}
	t.Cleanup(func() { dropDatabase(t, admin, name) })

	dsn, err := withDatabase(admin, name)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return dsn
}

// PostgresAdminURL returns a postgres:// URL for database "postgres" on the
// test server, as a user that may create databases. Tests that create
// databases themselves should drop them too.
func PostgresAdminURL(t testing.TB) string {
	t.Helper()
	adminOnce.Do(func() { adminURL, adminErr = findServer() })
	if adminErr != nil {
		t.Fatal(adminErr)
	}
	return adminURL
}

// Main runs the tests and then stops the private PostgreSQL server, if one
// was started. Use it as
//
//	func TestMain(m *testing.M) { testenv.Main(m) }
func Main(m *testing.M) {
	code := m.Run()
	StopPrivatePostgres()
	os.Exit(code)
}

// StopPrivatePostgres stops the private PostgreSQL server, if this process
// started one, and removes its directory. Main calls it.
func StopPrivatePostgres() {
	privateMu.Lock()
	defer privateMu.Unlock()
	if private != nil {
		private.stop()
		private = nil
	}
}

func dropDatabase(t testing.TB, admin, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Logf("testenv: drop database %s: %v", name, err)
		return
	}
	defer conn.Close(context.Background())
	q := "DROP DATABASE IF EXISTS " + pgx.Identifier{name}.Sanitize()
	if _, err := conn.Exec(ctx, q+" WITH (FORCE)"); err != nil {
		// WITH (FORCE) needs PostgreSQL 13; try without it.
		if _, err2 := conn.Exec(ctx, q); err2 != nil {
			t.Logf("testenv: drop database %s: %v", name, err)
		}
	}
}

// findServer picks the server, trying the sources in the order given in the
// package comment, and returns its admin URL or an error that says how to
// get one.
func findServer() (string, error) {
	var tried []string
	if os.Getenv(EnvPrivatePG) != "1" {
		if env := os.Getenv(EnvDatabaseURL); env != "" {
			dsn, err := withDatabase(env, "postgres")
			if err == nil {
				err = checkAdmin(dsn, 30*time.Second)
			}
			if err != nil {
				return "", fmt.Errorf("testenv: %s=%s does not work: %v\n"+
					"It must be a postgres:// URL to a running server whose user may CREATE DATABASE. "+
					"Fix it, or unset it to use a local server (./scripts/test.sh sets one up).",
					EnvDatabaseURL, redact(env), err)
			}
			return dsn, nil
		}
		err := checkAdmin(DefaultAdminURL, 3*time.Second)
		if err == nil {
			return DefaultAdminURL, nil
		}
		tried = append(tried, fmt.Sprintf("%s unset; %s: %v", EnvDatabaseURL, DefaultAdminURL, err))
	} else {
		tried = append(tried, EnvPrivatePG+"=1, so only a private server was tried")
	}

	privateMu.Lock()
	defer privateMu.Unlock()
	srv, err := startPrivate()
	if err == nil {
		private = srv
		return srv.url, nil
	}
	tried = append(tried, "private server: "+err.Error())
	return "", fmt.Errorf("testenv: no PostgreSQL server for tests.\nTried:\n  - %s\n"+
		"To fix, do one of:\n"+
		"  - run ./scripts/test.sh as root (it installs and starts PostgreSQL on Debian/Ubuntu);\n"+
		"  - apt-get install -y postgresql  (this package then starts its own server from /usr/lib/postgresql/*/bin);\n"+
		"  - export %s=postgres://USER:PASSWORD@HOST:PORT/postgres?sslmode=disable  (a user that may CREATE DATABASE).",
		strings.Join(tried, "\n  - "), EnvDatabaseURL)
}

// checkAdmin connects to dsn and checks that the user may create databases.
func checkAdmin(dsn string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var ok bool
	if err := conn.QueryRow(ctx, "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user").Scan(&ok); err != nil {
		return err
	}
	if !ok {
		return errors.New("the user may not create databases")
	}
	return nil
}

// withDatabase returns dsn with its database replaced by name.
func withDatabase(dsn, name string) (string, error) {
	u, err := url.Parse(dsn)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return "", fmt.Errorf("%q is not a postgres:// URL", redact(dsn))
	}
	u.Path = "/" + name
	u.RawPath = ""
	q := u.Query()
	if q.Has("dbname") {
		q.Set("dbname", name)
		u.RawQuery = q.Encode()
	}
	return u.String(), nil
}

// redact hides the password in a URL for messages.
func redact(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// ---- private server -------------------------------------------------------

const privateDirPrefix = "keyd-pg-"

type pgServer struct {
	dir    string
	url    string
	cmd    *exec.Cmd
	exited chan struct{} // closed when the postgres process has exited
}

// startPrivate initializes a cluster in a new temporary directory and starts
// postgres on a free loopback port.
func startPrivate() (*pgServer, error) {
	bin, err := postgresBinDir()
	if err != nil {
		return nil, err
	}
	cred, err := runAs()
	if err != nil {
		return nil, err
	}
	removeStaleDirs()

	dir, err := os.MkdirTemp(tempParent(cred), privateDirPrefix)
	if err != nil {
		return nil, err
	}
	// The owner file lets a later run remove this directory if this process
	// dies without stopping the server.
	if err := os.WriteFile(filepath.Join(dir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	data := filepath.Join(dir, "data")

	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres",
		"-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C")
	initdb.Dir = dir
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("%s: %v\n%s", initdb, err, bytes.TrimSpace(out))
	}

	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		srv, err := launch(bin, dir, cred)
		if err == nil {
			return srv, nil
		}
		lastErr = err
	}
	os.RemoveAll(dir)
	return nil, lastErr
}

// launch starts postgres on a free port and waits until it answers.
func launch(bin, dir string, cred *syscall.Credential) (*pgServer, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, "postgres.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()

	cmd := exec.Command(filepath.Join(bin, "postgres"),
		"-D", filepath.Join(dir, "data"), "-p", strconv.Itoa(port), "-k", dir,
		"-c", "listen_addresses=127.0.0.1",
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "max_connections=200", "-c", "shared_buffers=32MB")
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: cred,
		Setpgid:    true,
		// SIGINT (fast shutdown) when this process dies without calling Main.
		Pdeathsig: syscall.SIGINT,
	}
	srv := &pgServer{
		dir:    dir,
		url:    fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port),
		cmd:    cmd,
		exited: make(chan struct{}),
	}
	// Pdeathsig fires when the thread that started the child exits, so start
	// and wait on a goroutine that holds its thread until postgres exits.
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			runtime.UnlockOSThread()
			started <- err
			return
		}
		started <- nil
		_ = cmd.Wait()
		close(srv.exited)
		// Never unlock: this thread exits with the goroutine, which is fine
		// now that postgres is gone.
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %v", cmd.Path, err)
	}

	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-srv.exited:
			log, _ := os.ReadFile(logPath)
			return nil, fmt.Errorf("postgres exited during startup (port %d):\n%s", port, bytes.TrimSpace(log))
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := pgx.Connect(ctx, srv.url)
		if err == nil {
			conn.Close(ctx)
			cancel()
			return srv, nil
		}
		cancel()
		if time.Now().After(deadline) {
			srv.kill()
			log, _ := os.ReadFile(logPath)
			return nil, fmt.Errorf("postgres did not answer on port %d within 60s: %v\n%s", port, err, bytes.TrimSpace(log))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop shuts postgres down (fast shutdown, then kill) and removes its directory.
func (s *pgServer) stop() {
	s.kill()
	os.RemoveAll(s.dir)
}

// kill shuts postgres down (fast shutdown, then SIGKILL) and waits for it.
func (s *pgServer) kill() {
	_ = s.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-s.exited:
	case <-time.After(15 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}

// postgresBinDir finds the newest /usr/lib/postgresql/<ver>/bin with initdb
// and postgres, else asks pg_config.
func postgresBinDir() (string, error) {
	usable := func(d string) bool {
		for _, f := range []string{"initdb", "postgres"} {
			if _, err := os.Stat(filepath.Join(d, f)); err != nil {
				return false
			}
		}
		return true
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(matches, func(i, j int) bool { return pgVersion(matches[i]) > pgVersion(matches[j]) })
	for _, d := range matches {
		if usable(d) {
			return d, nil
		}
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		if d := strings.TrimSpace(string(out)); usable(d) {
			return d, nil
		}
	}
	return "", errors.New("no PostgreSQL server binaries (initdb, postgres) in /usr/lib/postgresql/*/bin or pg_config --bindir; install them with: apt-get install -y postgresql")
}

func pgVersion(binDir string) float64 {
	v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(binDir)), 64)
	return v
}

// runAs returns the credentials to run initdb and postgres with: nil when not
// root, else the "postgres" user (or "nobody"), since both refuse to run as root.
func runAs() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 != nil || err2 != nil {
			continue
		}
		// Groups nil: drop root's supplementary groups.
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
	}
	return nil, errors.New("running as root, and there is no \"postgres\" or \"nobody\" user to run PostgreSQL as (initdb refuses root); apt-get install -y postgresql creates the postgres user")
}

// tempParent returns the directory for the private server's directory. When
// running as another user, every directory above it must be searchable by
// that user, which a root-only TMPDIR is not; then /tmp is used.
func tempParent(cred *syscall.Credential) string {
	d := os.TempDir()
	if cred == nil {
		return d
	}
	for p := d; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return "/tmp"
		}
		if p == filepath.Dir(p) {
			return d
		}
	}
}

// removeStaleDirs removes private server directories left by test binaries
// that died without stopping their server (owner process and postmaster gone).
func removeStaleDirs() {
	for _, parent := range []string{os.TempDir(), "/tmp"} {
		dirs, _ := filepath.Glob(filepath.Join(parent, privateDirPrefix+"*"))
		for _, d := range dirs {
			fi, err := os.Stat(d)
			if err != nil || !fi.IsDir() || time.Since(fi.ModTime()) < time.Minute {
				continue
			}
			if pidAlive(readPid(filepath.Join(d, "owner.pid"))) ||
				pidAlive(readPid(filepath.Join(d, "data", "postmaster.pid"))) {
				continue
			}
			os.RemoveAll(d)
		}
	}
}

func readPid(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, _ := strconv.Atoi(strings.TrimSpace(line))
	return pid
}

func pidAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
