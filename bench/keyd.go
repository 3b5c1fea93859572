package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/migrations"
	"github.com/keyd-dev/keyd/verifier"
)

// startKeyd starts an in-process keyd on the world and the run's
// database, stopped when the world closes.
func (r *runner) startKeyd(ctx context.Context, w *world) (*Keyd, error) {
	if r.env.StartKeyd == nil {
		return nil, errors.New("no way to start keyd (Env.StartKeyd is nil)")
	}
	k, err := r.env.StartKeyd(ctx, KeydConfig{NATS: w.ns, DatabaseURL: r.db.url, AdminToken: r.adminToken, Secret: r.secret})
	if err != nil {
		return nil, fmt.Errorf("starting keyd: %w", err)
	}
	w.onClose(k.Close)
	return k, nil
}

// request sends a keyd command over NATS and decodes its reply into out;
// an error reply is returned as an error.
func request(ctx context.Context, nc *nats.Conn, subject string, payload, out any) error {
	b, err := json.Marshal(payload)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	m, err := nc.RequestWithContext(ctx, subject, b)
	if err != nil {
		return fmt.Errorf("%s: %w", subject, err)
	}
	return decodeReply(subject, m.Data, out)
}

func decodeReply(subject string, data []byte, out any) error {
	var e struct {
		Error *struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(data, &e); err != nil {
		return fmt.Errorf("%s: reply is not JSON: %w", subject, err)
	}
	if e.Error != nil {
		return fmt.Errorf("%s: %s: %s", subject, e.Error.Code, e.Error.Message)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(data, out)
}

// benchPermission is the permission the benchmark's keys hold.
const benchPermission = "bench:read"

func definePermission(ctx context.Context, nc *nats.Conn) error {
	return request(ctx, nc, "keyd.cmd.permissions.define",
		map[string]string{"slug": benchPermission, "description": "keyd bench"}, nil)
}

// createKeys creates n keys in org over NATS from 8 clients at once.
func createKeys(ctx context.Context, nc *nats.Conn, org string, n int, tick func(done int)) ([]domain.CreateKeyResult, error) {
	out := make([]domain.CreateKeyResult, n)
	var mu sync.Mutex
	var firstErr error
	next, done := 0, 0
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for {
				mu.Lock()
				i := next
				next++
				stop := firstErr != nil
				mu.Unlock()
				if i >= n || stop {
					return
				}
				err := request(ctx, nc, "keyd.cmd.keys."+org+".create",
					map[string]any{"name": fmt.Sprintf("bench key %d", i), "permissions": []string{benchPermission}}, &out[i])
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				done++
				d := done
				mu.Unlock()
				if tick != nil {
					tick(d)
				}
			}
		})
	}
	wg.Wait()
	return out, firstErr
}

// waitProjected waits until the read models have applied seq.
func (r *runner) waitProjected(ctx context.Context, seq uint64) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		cp, err := migrations.AppliedSequence(ctx, r.db.pool)
		if err != nil {
			return err
		}
		if cp >= seq {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the read models did not reach sequence %d within 60s (at %d)", seq, cp)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// ---- keyd serve in another OS process -----------------------------------

// remote is a `keyd serve` process.
type remote struct {
	cmd  *exec.Cmd
	logs *syncBuffer
	base string // http://host:port
	done chan struct{}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startServe runs `keyd serve` against the world's NATS server and the
// run's database, and waits until it is ready. It is stopped when the
// world closes.
func (r *runner) startServe(ctx context.Context, w *world) (*remote, error) {
	if r.env.Executable == "" {
		return nil, errors.New("no keyd executable to run keyd serve with (Env.Executable is empty)")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	p := &remote{logs: &syncBuffer{}, base: "http://" + addr, done: make(chan struct{})}
	p.cmd = exec.Command(r.env.Executable, "serve", "--http", addr)
	// Only this run's configuration: no KEYD_* of the caller's environment.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KEYD_") {
			p.cmd.Env = append(p.cmd.Env, kv)
		}
	}
	p.cmd.Env = append(p.cmd.Env, "KEYD_NATS_URL="+w.url, "KEYD_DATABASE_URL="+r.db.url,
		"KEYD_ADMIN_TOKEN="+r.adminToken, "KEYD_SECRET="+r.secret, "KEYD_LOG_LEVEL=warn")
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	setDeathSignal(p.cmd)
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s serve: %w", r.env.Executable, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	w.onClose(p.stop)
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-p.done:
			return nil, fmt.Errorf("keyd serve exited at start:\n%s", p.logs.String())
		case <-ctx.Done():
			return nil, ctx.Err()
		default:
		}
		resp, err := http.Get(p.base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("keyd serve not ready within 60s:\n%s", p.logs.String())
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// stop ends the process: SIGTERM, then SIGKILL after 20 seconds.
func (p *remote) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// fanout is what a propagation scenario measures: a keyd serve process
// (polled over HTTP with poller) and embedded verifiers, all booted once the
// read models held the stream up to lastSeq.
type fanout struct {
	lastSeq uint64
	rem     *remote
	local   []*verifier.Verifier
	poller  *http.Client
}

// startFanout waits until the read models hold everything appended so far
// (so every verifier boots from the same snapshot), then starts a keyd serve
// process and n-1 embedded verifiers built from a verifier credential.
// Everything is closed with w; the caller closes f.poller's idle connections.
func (r *runner) startFanout(ctx context.Context, w *world, n int) (f fanout, err error) {
	if f.lastSeq, err = w.streamLast(ctx); err != nil {
		return f, err
	}
	if err := r.waitProjected(ctx, f.lastSeq); err != nil {
		return f, err
	}
	r.phase("starting keyd serve in another process")
	if f.rem, err = r.startServe(ctx, w); err != nil {
		return f, err
	}
	for i := range n - 1 {
		r.phase("starting embedded verifier %d of %d", i+1, n-1)
		v, err := verifier.Connect(ctx, w.url, r.db.url, domain.NewVerifierCredential([]byte(r.secret)).String(), verifier.WithLogger(r.log),
			verifier.WithNATSOptions(nats.Name(fmt.Sprintf("keyd bench verifier %d", i+1))))
		if err != nil {
			return f, err
		}
		w.onClose(v.Close)
		f.local = append(f.local, v)
	}
	f.poller = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1, DisableCompression: true}, Timeout: 10 * time.Second}
	return f, nil
}
