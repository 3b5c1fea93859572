package natscmd

import (
	"context"
	"crypto/rand"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	dto "github.com/prometheus/client_model/go"

	"github.com/keyd-dev/keyd/adapters/commands"
	"github.com/keyd-dev/keyd/adapters/metrics"
	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/eventstore"
	"github.com/keyd-dev/keyd/internal/testenv"
)

func TestReplyAllowed(t *testing.T) {
	t.Parallel()
	extra := []string{"myapp.replies.", "_REPLY_acme."}
	for reply, want := range map[string]bool{
		"_INBOX.abc.1":      true,
		"_INBOX_acme.abc.1": true,
		"_R_.xyz.abc":       true,
		"myapp.replies.x":   true,
		"_REPLY_acme.1":     true,
		"":                  false,
		"_INBOX":            false,
		"_R_":               false,
		"_Rx.abc":           false,
		"myapp.replies":     false,
		"myapp.other.x":     false,
		"keyd.events.keys.orgA.key_01M8SB99999999999999999999": false,
		"keyd.cmd.keys.orgA.create":                            false,
		"$JS.API.STREAM.DELETE.KEYD_EVENTS":                    false,
		"$KV.KEYD_IDEMPOTENCY.x":                               false,
		"_INBOX.*":                                             false,
		"_INBOX.>":                                             false,
		"_INBOX.a b":                                           false,
	} {
		if got := ReplyAllowed(reply, extra); got != want {
			t.Errorf("ReplyAllowed(%q) = %v, want %v", reply, got, want)
		}
	}
}

func TestCheckReplyPrefix(t *testing.T) {
	t.Parallel()
	for p, ok := range map[string]bool{
		"myapp.replies.": true,
		"_REPLY_acme.":   true,
		"replies":        true,
		"":               false,
		"k":              false, // covers keyd.…
		"keyd":           false,
		"keyd.":          false,
		"keyd.events.":   false,
		"$JS.API.":       false,
		"$":              false,
		"a.*.":           false,
		"a.>":            false,
		"a b.":           false,
		".a":             false,
		"a..b":           false,
	} {
		if err := CheckReplyPrefix(p); (err == nil) != ok {
			t.Errorf("CheckReplyPrefix(%q) = %v, want ok=%v", p, err, ok)
		}
	}
}

// replyWorld is a responder on a real NATS server over an in-memory store.
type replyWorld struct {
	nc      *nats.Conn
	store   *eventstore.Memory
	metrics *metrics.Metrics
	logs    *testenv.SyncBuffer
}

func newReplyWorld(t *testing.T, prefixes ...string) *replyWorld {
	t.Helper()
	_, nc := testenv.JetStream(t)
	return newReplyWorldOn(t, nc, prefixes...)
}

func newReplyWorldOn(t *testing.T, nc *nats.Conn, prefixes ...string) *replyWorld {
	t.Helper()
	w := &replyWorld{nc: nc, store: eventstore.NewMemory(), metrics: metrics.New(), logs: &testenv.SyncBuffer{}}
	svc := &domain.Service{Store: w.store, Idempotency: eventstore.NewMemoryIdempotency(),
		Digester: domain.NewDigester([]byte("secret")), Now: time.Now, Rand: rand.Reader}
	r := &Responder{Conn: nc, Runner: &commands.Runner{Service: svc}, Metrics: w.metrics,
		Log: slog.New(slog.NewTextHandler(w.logs, nil)), ReplyPrefixes: prefixes}
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Stop(context.Background()) })
	return w
}

func (w *replyWorld) refused(reason string) float64 {
	var m dto.Metric
	if err := w.metrics.CommandsRefused.WithLabelValues(reason).Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}

func (w *replyWorld) last(t *testing.T) uint64 {
	t.Helper()
	last, err := w.store.LastSequence(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return last
}

// TestResponderRefusesForeignReplySubjects (finding C1): a request whose
// reply subject is not an inbox is not run and not answered, whatever it
// names (an event subject, the JetStream API, another command), and is
// counted; a line a second at most is logged. Inboxes, custom inbox
// prefixes, service-import replies and configured prefixes are answered.
func TestResponderRefusesForeignReplySubjects(t *testing.T) {
	t.Parallel()
	w := newReplyWorld(t, "myapp.replies.")
	foreign := []string{
		"keyd.events.keys.orgA.key_01M8SB99999999999999999999",
		"$JS.API.STREAM.DELETE.KEYD_EVENTS",
		"keyd.cmd.keys.orgA.revoke",
		"orgB.listener",
	}
	// Anything published on a foreign reply subject would arrive here.
	caught, err := w.nc.SubscribeSync(">")
	if err != nil {
		t.Fatal(err)
	}
	for _, reply := range foreign {
		if err := w.nc.PublishRequest("keyd.cmd.keys.orgA.create", reply, []byte(`{"name":"reply-to poison"}`)); err != nil {
			t.Fatal(err)
		}
	}
	testenv.WaitFor(t, 5*time.Second, "four refusals counted", func() bool { return w.refused(metrics.RefusedReplySubject) == 4 })
	if err := w.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := caught.NextMsg(200 * time.Millisecond)
		if err != nil {
			break
		}
		if m.Subject != "keyd.cmd.keys.orgA.create" {
			t.Errorf("keyd published on %s: %s", m.Subject, m.Data)
		}
	}
	if last := w.last(t); last != 0 {
		t.Errorf("refused requests appended %d events", last)
	}
	if got := w.refused(metrics.RefusedNoReply); got != 0 {
		t.Errorf("no_reply counted %v", got)
	}
	if n := strings.Count(w.logs.String(), "reply subject is not an inbox"); n != 1 {
		t.Errorf("%d log lines for 4 refusals within a second, want 1:\n%s", n, w.logs)
	}
	if !strings.Contains(w.logs.String(), "keyd.events.keys.orgA.key_01M8SB99999999999999999999") {
		t.Errorf("the refusal log does not name the reply subject:\n%s", w.logs)
	}

	// Answered: the default inbox, a custom inbox prefix, _R_. and the
	// configured prefix.
	for _, inbox := range []string{"_INBOX_acme", "myapp.replies"} {
		nc, err := nats.Connect(w.nc.ConnectedUrl(), nats.CustomInboxPrefix(inbox))
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		if m, err := nc.Request("keyd.cmd.keys.orgA.create", []byte(`{"name":"k"}`), 5*time.Second); err != nil || m.Header.Get(ErrorCodeHeader) != "" {
			t.Errorf("request with inbox prefix %s: %v", inbox, err)
		}
	}
	if m, err := w.nc.Request("keyd.cmd.keys.orgA.create", []byte(`{"name":"k"}`), 5*time.Second); err != nil || m.Header.Get(ErrorCodeHeader) != "" {
		t.Errorf("request with the default inbox: %v", err)
	}
	if last := w.last(t); last != 3 {
		t.Errorf("stream at %d after three answered creates, want 3", last)
	}
	if got := w.refused(metrics.RefusedReplySubject); got != 4 {
		t.Errorf("reply_subject refusals %v after answered requests, want still 4", got)
	}
}

// TestResponderAnswersServiceImports: a request from another account
// through a service import arrives with the server's _R_. reply subject
// (which no client may set itself) and is answered.
func TestResponderAnswersServiceImports(t *testing.T) {
	t.Parallel()
	var o server.Options
	if err := o.ProcessConfigString(`
accounts {
  KEYD { users: [ { user: keyd, password: keyd-pw } ], exports: [ { service: "keyd.cmd.>" } ] }
  APP { users: [ { user: app, password: app-pw } ], imports: [ { service: { account: KEYD, subject: "keyd.cmd.>" } } ] }
}`); err != nil {
		t.Fatal(err)
	}
	o.Host, o.Port, o.NoSigs, o.NoLog = "127.0.0.1", -1, true, true
	s := testenv.RunServer(t, &o)
	addr := strings.TrimPrefix(s.ClientURL(), "nats://")
	keydNC, err := nats.Connect("nats://keyd:keyd-pw@" + addr)
	if err != nil {
		t.Fatal(err)
	}
	defer keydNC.Close()
	w := newReplyWorldOn(t, keydNC)
	seen, err := keydNC.SubscribeSync("keyd.cmd.>")
	if err != nil {
		t.Fatal(err)
	}
	// The subscription must be at the server before the request is sent,
	// or the request can pass before it (seen under load).
	if err := keydNC.Flush(); err != nil {
		t.Fatal(err)
	}
	appNC, err := nats.Connect("nats://app:app-pw@" + addr)
	if err != nil {
		t.Fatal(err)
	}
	defer appNC.Close()
	m, err := appNC.Request("keyd.cmd.keys.orgA.create", []byte(`{"name":"k"}`), 5*time.Second)
	if err != nil {
		t.Fatalf("a request through a service import: %v", err)
	}
	if !strings.Contains(string(m.Data), `"secret"`) {
		t.Fatalf("a request through a service import answered %q", m.Data)
	}
	in, err := seen.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatalf("the request was not seen on keyd.cmd.> in keyd's account: %v", err)
	}
	if !strings.HasPrefix(in.Reply, "_R_.") {
		t.Errorf("the request reached keyd with reply %q, want _R_.…", in.Reply)
	}
	if got := w.refused(metrics.RefusedReplySubject); got != 0 {
		t.Errorf("refused %v", got)
	}
}

// TestResponderFloodWithoutReply (finding L6): 5,000 publishes without a
// reply subject run nothing, are all counted, and log a few lines, not
// 5,000.
func TestResponderFloodWithoutReply(t *testing.T) {
	t.Parallel()
	w := newReplyWorld(t)
	start := time.Now()
	for range 5000 {
		if err := w.nc.Publish("keyd.cmd.keys.org.create", []byte(`{"name":"fire and forget"}`)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 20*time.Second, "5,000 no_reply refusals", func() bool { return w.refused(metrics.RefusedNoReply) == 5000 })
	lines := strings.Count(w.logs.String(), "command without a reply subject ignored")
	// One line a second at most (the flood takes well under a second here).
	if max := 2 + int(time.Since(start)/time.Second); lines < 1 || lines > max {
		t.Errorf("%d log lines for 5,000 publishes, want 1 to %d:\n%s", lines, max, w.logs)
	}
	if last := w.last(t); last != 0 {
		t.Errorf("publishes without reply appended %d events", last)
	}
}

func TestLimitedLog(t *testing.T) {
	t.Parallel()
	var l limitedLog
	t0 := time.Unix(1000, 0)
	if ok, n := l.allow(t0); !ok || n != 0 {
		t.Fatalf("first: %v %d", ok, n)
	}
	for i := range 10 {
		if ok, _ := l.allow(t0.Add(time.Duration(i) * 50 * time.Millisecond)); ok {
			t.Fatalf("line %d within a second allowed", i)
		}
	}
	if ok, n := l.allow(t0.Add(time.Second)); !ok || n != 10 {
		t.Fatalf("after a second: %v, suppressed %d, want true, 10", ok, n)
	}
	if ok, _ := l.allow(t0.Add(1500 * time.Millisecond)); ok {
		t.Fatal("allowed again within a second")
	}
}
