package main

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keyd-dev/keyd/internal/testenv"
)

var (
	buildOnce sync.Once
	buildDir  string
	buildPath string
	buildErr  error
)

// mustBuild builds the keyd binary once per test run (tests that need a
// real OS process: SIGKILL, two processes side by side). TestMain removes
// it (removeBuild) when the tests are done.
func mustBuild(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "keyd-bin-")
		if err != nil {
			buildErr = err
			return
		}
		buildDir, buildPath = dir, filepath.Join(dir, "keyd")
		out, err := exec.Command("go", "build", "-race", "-o", buildPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildPath
}

// removeBuild removes the directory mustBuild built keyd into, if it did.
// Every process run from it has stopped by then (each test's cleanup
// stops its own).
func removeBuild() {
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
}

// proc is a keyd OS process started by a test.
type proc struct {
	cmd  *exec.Cmd
	logs *testenv.SyncBuffer
	HTTP string // base URL
	done chan struct{}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startServe starts `keyd serve` as a separate process and waits until its
// /readyz answers 200.
func startServe(t *testing.T, natsURL, dbURL, token, secret string, extra ...string) *proc {
	t.Helper()
	p := launchServe(t, natsURL, dbURL, token, secret, extra...)
	p.waitReady(t)
	return p
}

// launchServe starts `keyd serve` as a separate process without waiting.
func launchServe(t *testing.T, natsURL, dbURL, token, secret string, extra ...string) *proc {
	t.Helper()
	bin := mustBuild(t)
	addr := freeAddr(t)
	p := &proc{logs: &testenv.SyncBuffer{}, HTTP: "http://" + addr, done: make(chan struct{})}
	p.cmd = exec.Command(bin, append([]string{"serve", "--http", addr}, extra...)...)
	p.cmd.Env = append(os.Environ(),
		"KEYD_NATS_URL="+natsURL, "KEYD_DATABASE_URL="+dbURL,
		"KEYD_ADMIN_TOKEN="+token, "KEYD_SECRET="+secret, "KEYD_LOG_LEVEL=debug")
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.Kill(syscall.SIGTERM)
		if t.Failed() {
			t.Logf("logs of keyd serve on %s:\n%s", p.HTTP, p.logs.String())
		}
	})
	return p
}

// waitReady waits until the process's /readyz answers 200.
func (p *proc) waitReady(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-p.done:
			t.Fatalf("keyd serve exited at start:\n%s", p.logs.String())
		default:
		}
		resp, err := http.Get(p.HTTP + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("keyd serve not ready in 60s:\n%s", p.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Kill sends sig and waits for the process to end.
func (p *proc) Kill(sig syscall.Signal) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// lines returns the process's log lines containing s.
func (p *proc) lines(s string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(p.logs.String()))
	for sc.Scan() {
		if strings.Contains(sc.Text(), s) {
			out = append(out, sc.Text())
		}
	}
	return out
}
