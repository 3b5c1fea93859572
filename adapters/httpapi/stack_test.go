package httpapi

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/adapters/commands"
	"github.com/keyd-dev/keyd/adapters/metrics"
	"github.com/keyd-dev/keyd/adapters/postgres"
	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/eventstore"
	"github.com/keyd-dev/keyd/internal/testenv"
	"github.com/keyd-dev/keyd/migrations"
	"github.com/keyd-dev/keyd/projections"
	"github.com/keyd-dev/keyd/verifier"
)

func TestMain(m *testing.M) { testenv.Main(m) }

const adminToken = "test-admin-token-0123456789"

// stack is the whole HTTP API over a real keyd: an in-process JetStream
// server with the KEYD_EVENTS stream, the domain service on the JetStream
// event store, the command Runner, a fresh Postgres database with the
// migrations applied, the projector following the stream into it, and the
// Server on an httptest server. Every reply body and log line is kept, to
// check that secrets appear nowhere they must not.
type stack struct {
	t        *testing.T
	srv      *Server
	http     *httptest.Server
	store    domain.EventStore
	reads    *postgres.ReadModel
	metrics  *metrics.Metrics
	sessions *Sessions
	logs     *testenv.SyncBuffer
	js       jetstream.JetStream
	dbURL    string

	mu     sync.Mutex
	bodies []string
}

type stackOption func(*Server)

// newStack starts a full stack; options adjust the Server before it serves.
func newStack(t *testing.T, opts ...stackOption) *stack {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())

	_, nc := testenv.JetStream(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := eventstore.EnsureStream(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	signer := domain.NewEventSigner([]byte("test deployment secret"))
	store := eventstore.NewJetStream(js, nc, stream, eventstore.WithSigner(signer))

	dbURL := testenv.PostgresURL(t)
	pool, err := postgres.Open(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close) // after the projector stops (cleanups run LIFO)
	logs := &testenv.SyncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if _, err := migrations.Apply(ctx, pool, log); err != nil {
		t.Fatal(err)
	}
	projector := projections.NewProjector(pool, js, log)
	projector.EventKey = signer.PublicKey()
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := projector.Run(ctx); err != nil {
			t.Errorf("projector: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })

	m := metrics.New()
	svc := &domain.Service{
		Store:    store,
		Digester: domain.NewDigester([]byte("test deployment secret")),
		Now:      time.Now,
		Rand:     rand.Reader,
	}
	sessions := NewSessions(domain.DeriveKey([]byte("test deployment secret"), SessionKeyLabel), nil)
	v := verifier.New(verifier.Config{Pool: pool, JS: js, Conn: nc, Digester: svc.Digester, EventKey: signer.PublicKey(), Log: log, LastUsedInterval: -1})
	if err := v.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	s := &stack{t: t, store: store, reads: postgres.NewReadModel(pool, nil), metrics: m, sessions: sessions, logs: logs, js: js, dbURL: dbURL}
	s.srv = &Server{
		Runner:          &commands.Runner{Service: svc, Metrics: m, Log: log},
		Reads:           s.reads,
		AdminToken:      adminToken,
		Sessions:        sessions,
		Metrics:         m,
		WidgetOrigins:   []string{"https://app.example.com"},
		Log:             log,
		MinSequenceWait: time.Second,
		Verifier:        v,
	}
	for _, o := range opts {
		o(s.srv)
	}
	s.http = httptest.NewServer(s.srv.Handler())
	t.Cleanup(s.http.Close)
	return s
}

// reply is one HTTP reply.
type reply struct {
	Status int
	Header http.Header
	Body   []byte
}

// json decodes the body into v.
func (r reply) json(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.Body, v); err != nil {
		t.Fatalf("reply body %s: %v", r.Body, err)
	}
}

// errorCode returns the error code of an error reply, "" if it is none.
func (r reply) errorCode() string {
	var e domain.ErrorBody
	_ = json.Unmarshal(r.Body, &e)
	return e.Error.Code
}

// do sends a request with the bearer token (none if empty); body is sent as
// is if it is a string or []byte, else as JSON; hdr are header name, value
// pairs.
func (s *stack) do(t testing.TB, method, path, token string, body any, hdr ...string) reply {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case io.Reader:
		rd = b
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, s.http.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := s.http.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	s.mu.Lock()
	s.bodies = append(s.bodies, string(b))
	s.mu.Unlock()
	return reply{Status: res.StatusCode, Header: res.Header, Body: b}
}

// must sends a request and fails the test unless the status is want.
func (s *stack) must(t testing.TB, want int, method, path, token string, body any, hdr ...string) reply {
	t.Helper()
	r := s.do(t, method, path, token, body, hdr...)
	if r.Status != want {
		t.Fatalf("%s %s: status %d, want %d; body %s", method, path, r.Status, want, r.Body)
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") && r.Status != http.StatusNoContent {
		t.Errorf("%s %s: Content-Type %q, want application/json", method, path, ct)
	}
	return r
}

// mustFail sends a request and fails the test unless it is an error reply
// with the code and its status.
func (s *stack) mustFail(t testing.TB, code, method, path, token string, body any, hdr ...string) reply {
	t.Helper()
	r := s.must(t, domain.HTTPStatus(code), method, path, token, body, hdr...)
	if got := r.errorCode(); got != code {
		t.Fatalf("%s %s: error code %q, want %q; body %s", method, path, got, code, r.Body)
	}
	return r
}

// definePermissions defines slugs in the catalog.
func (s *stack) definePermissions(slugs ...string) uint64 {
	s.t.Helper()
	var seq uint64
	for _, slug := range slugs {
		var res domain.PermissionResult
		s.must(s.t, 200, "PUT", "/v1/permissions/"+slug, adminToken, map[string]string{"description": "allows " + slug}).json(s.t, &res)
		seq = res.Sequence
	}
	return seq
}

// createKey creates a key in org with the admin token.
func (s *stack) createKey(org, name string, perms ...string) domain.CreateKeyResult {
	s.t.Helper()
	if perms == nil {
		perms = []string{}
	}
	var res domain.CreateKeyResult
	s.must(s.t, 201, "POST", "/v1/orgs/"+org+"/keys", adminToken, map[string]any{"name": name, "permissions": perms}).json(s.t, &res)
	return res
}

// session issues a widget session token for user in org.
func (s *stack) session(org, user string) string {
	s.t.Helper()
	var res sessionReply
	s.must(s.t, 200, "POST", "/v1/widget/sessions", adminToken, map[string]string{"org_id": org, "user_id": user}).json(s.t, &res)
	return res.Token
}

func u64(n uint64) string { return strconv.FormatUint(n, 10) }
