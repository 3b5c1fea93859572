package testenv

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// PostgresServer is a PostgreSQL server of its own for one test, which the
// test may stop and start again (on the same port and data) to simulate an
// outage. Unlike PostgresURL's shared server, nothing else uses it.
type PostgresServer struct {
	// AdminURL is a postgres:// URL for database "postgres" as the
	// superuser "postgres" (trust authentication, 127.0.0.1 only).
	AdminURL string

	bin, dir string
	port     int
	cred     *syscall.Credential

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// StartPostgresServer initializes a cluster in a new temporary directory
// (from the Debian packages in /usr/lib/postgresql/*/bin, like the private
// server of PostgresURL), starts it on a free loopback port and waits until
// it answers. It is stopped and removed in t.Cleanup. Tests that need no
// outage should use PostgresURL, which is much cheaper.
func StartPostgresServer(t testing.TB) *PostgresServer {
	t.Helper()
	bin, err := postgresBinDir()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	cred, err := runAs()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	dir, err := os.MkdirTemp(tempParent(cred), privateDirPrefix)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// As for the shared private server: a later run removes this directory
	// if this process dies without stopping the server.
	if err := os.WriteFile(filepath.Join(dir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			t.Fatalf("testenv: %v", err)
		}
	}
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", filepath.Join(dir, "data"), "-U", "postgres",
		"-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C")
	initdb.Dir = dir
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		t.Fatalf("testenv: %s: %v\n%s", initdb, err, bytes.TrimSpace(out))
	}
	s := &PostgresServer{bin: bin, dir: dir, cred: cred}
	for attempt := 1; ; attempt++ {
		if s.port, err = freePort(); err != nil {
			t.Fatalf("testenv: %v", err)
		}
		s.AdminURL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", s.port)
		if err = s.start(); err == nil {
			break
		}
		if attempt == 3 {
			t.Fatalf("testenv: %v", err)
		}
	}
	t.Cleanup(func() { s.Stop(false) })
	return s
}

// NewDatabase creates a new empty database on s and returns its URL.
func (s *PostgresServer) NewDatabase(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.AdminURL)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	defer conn.Close(context.Background())
	name := "keyd_t_" + randomHex(8)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name+" TEMPLATE template0"); err != nil {
		t.Fatalf("testenv: create database: %v", err)
	}
	dsn, err := withDatabase(s.AdminURL, name)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return dsn
}

// Stop shuts the server down and waits until it has exited: a fast
// shutdown (SIGINT: sessions are disconnected, a checkpoint is written), or,
// with immediate, an immediate one (SIGQUIT: like a crash, recovery from
// the WAL at the next start). Stopping a stopped server does nothing.
func (s *PostgresServer) Stop(immediate bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	sig := syscall.SIGINT
	if immediate {
		sig = syscall.SIGQUIT
	}
	_ = s.cmd.Process.Signal(sig)
	select {
	case <-s.exited:
	case <-time.After(20 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
	s.cmd = nil
}

// Start starts a stopped server again on the same port and data and waits
// until it answers.
func (s *PostgresServer) Start(t testing.TB) {
	t.Helper()
	if err := s.start(); err != nil {
		t.Fatalf("testenv: %v", err)
	}
}

func (s *PostgresServer) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return nil
	}
	logFile, err := os.OpenFile(filepath.Join(s.dir, "postgres.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(filepath.Join(s.bin, "postgres"),
		"-D", filepath.Join(s.dir, "data"), "-p", strconv.Itoa(s.port), "-k", s.dir,
		"-c", "listen_addresses=127.0.0.1",
		// fsync off: a stop of the process (even immediate) keeps what the
		// kernel has; synchronous_commit stays on, so a commit that was
		// acknowledged is in the WAL the kernel has when the server is stopped.
		"-c", "fsync=off",
		"-c", "max_connections=100", "-c", "shared_buffers=16MB")
	cmd.Dir = s.dir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred, Setpgid: true, Pdeathsig: syscall.SIGINT}
	exited := make(chan struct{})
	started := make(chan error, 1)
	// Pdeathsig fires when the starting thread exits: hold it until postgres
	// has exited (as the shared private server does).
	go func() {
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			runtime.UnlockOSThread()
			started <- err
			return
		}
		started <- nil
		_ = cmd.Wait()
		close(exited)
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("start %s: %v", cmd.Path, err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-exited:
			log, _ := os.ReadFile(filepath.Join(s.dir, "postgres.log"))
			return fmt.Errorf("postgres exited during startup (port %d):\n%s", s.port, tail(log, 2000))
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := pgx.Connect(ctx, s.AdminURL)
		cancel()
		if err == nil {
			conn.Close(context.Background())
			s.cmd, s.exited = cmd, exited
			return nil
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-exited
			return fmt.Errorf("postgres did not answer on port %d within 60s: %v", s.port, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func tail(b []byte, n int) []byte {
	b = bytes.TrimSpace(b)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return b
}
