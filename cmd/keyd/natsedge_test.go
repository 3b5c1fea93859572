package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	dto "github.com/prometheus/client_model/go"

	"github.com/keyd-dev/keyd/adapters/metrics"
	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/internal/natsconn"
	"github.com/keyd-dev/keyd/internal/natsconn/natsconntest"
	"github.com/keyd-dev/keyd/internal/testenv"
	"github.com/keyd-dev/keyd/verifier"
)

// edgeToken is an admin token keyd serve accepts.
const edgeToken = "kat_8c1d2e3f405162738495a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091"

// edgeCredential is the verifier credential of testSecret.
func edgeCredential() string { return domain.NewVerifierCredential([]byte(testSecret)).String() }

func serveEnv() map[string]string {
	return map[string]string{"KEYD_ADMIN_TOKEN": edgeToken, "KEYD_SECRET": testSecret}
}

func refusedCount(t *testing.T, a *App, reason string) float64 {
	t.Helper()
	var m dto.Metric
	if err := a.Metrics.CommandsRefused.WithLabelValues(reason).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// awaitValid waits until v finds secret valid (a create's reply may come
// before the verifier of the process that answered has applied it).
func awaitValid(t *testing.T, v *verifier.Verifier, secret string) {
	t.Helper()
	testenv.WaitFor(t, 10*time.Second, "the verifier to accept a new key", func() bool {
		r, err := v.Verify(context.Background(), secret)
		return err == nil && r.Valid
	})
}

// TestReplyIntoTheEventStreamRefused (finding C1): a tenant's create whose
// reply subject is an event subject of KEYD_EVENTS, or the JetStream API's
// stream delete, is not executed: no reply anywhere, the stream's last
// sequence unchanged, keyd's verifier and an embedded one stay ready and go
// on verifying keys, and the refusals are counted. Requests from inboxes are
// answered, as is a configured --nats-reply-prefix.
//
// It also shows the two connections of point 1: the command responder's
// connection holds the only keyd.cmd.> subscription and publishes nothing
// but its replies; the event store's has no command subscription.
func TestReplyIntoTheEventStreamRefused(t *testing.T) {
	t.Parallel()
	ns, client := testenv.JetStream(t)
	k := MustStart(t, serveEnv(), "serve", "--http", "127.0.0.1:0", "--database-url", testenv.PostgresURL(t),
		"--nats-url", ns.ClientURL(), "--nats-reply-prefix", "myapp.replies.")
	a := k.App
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	created := mustOK(t, request(t, client, "keyd.cmd.keys.orgB.create", `{"name":"orgB key"}`))
	secret, _ := created["secret"].(string)
	embedded, err := verifier.Connect(ctx, ns.ClientURL(), "", edgeCredential())
	if err != nil {
		t.Fatal(err)
	}
	defer embedded.Close()
	awaitValid(t, a.Verifier, secret)
	if r, err := embedded.Verify(ctx, secret); err != nil || !r.Valid {
		t.Fatalf("before: the embedded verifier: %v %v", r, err)
	}
	before, err := a.Store.LastSequence(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// Everything keyd might publish on the poisoned subjects lands here.
	caught, err := client.SubscribeSync(">")
	if err != nil {
		t.Fatal(err)
	}
	poisoned := []string{"keyd.events.keys.orgA.key_01M8SB99999999999999999999", "$JS.API.STREAM.DELETE.KEYD_EVENTS"}
	for _, reply := range poisoned {
		if err := client.PublishRequest("keyd.cmd.keys.orgA.create", reply, []byte(`{"name":"reply-to poison"}`)); err != nil {
			t.Fatal(err)
		}
	}
	testenv.WaitFor(t, 10*time.Second, "two reply_subject refusals", func() bool {
		return refusedCount(t, a, metrics.RefusedReplySubject) == 2
	})
	if err := client.Flush(); err != nil {
		t.Fatal(err)
	}
	// Until quiet, or for 2 s: idle stream tails ask for the stream's
	// state every StallAfter/2 (their watchdog), so ">" is never quiet
	// for long; keyd's reply to a request comes at once, not later.
	for drainUntil := time.Now().Add(2 * time.Second); time.Now().Before(drainUntil); {
		m, err := caught.NextMsg(300 * time.Millisecond)
		if err != nil {
			break
		}
		for _, reply := range poisoned {
			if m.Subject == reply {
				t.Errorf("keyd published on %s: %s", m.Subject, m.Data)
			}
		}
	}
	_ = caught.Unsubscribe()
	if after, err := a.Store.LastSequence(ctx); err != nil || after != before {
		t.Errorf("KEYD_EVENTS' last sequence went from %d to %d (%v)", before, after, err)
	}
	if _, err := a.JS.Stream(ctx, "KEYD_EVENTS"); err != nil {
		t.Errorf("KEYD_EVENTS after a reply aimed at its deletion: %v", err)
	}
	for name, v := range map[string]*verifier.Verifier{"keyd's": a.Verifier, "embedded": embedded} {
		if st := v.Status(); !st.Ready || st.Err != nil {
			t.Errorf("%s verifier after the refused requests: %+v", name, st)
		}
		if r, err := v.Verify(ctx, secret); err != nil || !r.Valid {
			t.Errorf("%s verifier after the refused requests: %v %v", name, r, err)
		}
	}
	if !strings.Contains(k.Stderr.String(), "reply subject is not an inbox") {
		t.Errorf("the refusal is not logged:\n%s", k.Stderr)
	}

	// Inboxes and the configured prefix are answered.
	for _, prefix := range []string{"", "_INBOX_orgA", "myapp.replies"} {
		opts := []nats.Option{}
		if prefix != "" {
			opts = append(opts, nats.CustomInboxPrefix(prefix))
		}
		nc, err := nats.Connect(ns.ClientURL(), opts...)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		mustOK(t, request(t, nc, "keyd.cmd.keys.orgA.create", `{"name":"asked properly"}`))
	}
	if after, _ := a.Store.LastSequence(ctx); after != before+3 {
		t.Errorf("last sequence %d after three answered creates, want %d", after, before+3)
	}

	// Two connections: the responder's subscribes to keyd.cmd.> alone and
	// has published exactly its replies (4 answered requests).
	connz, err := ns.Connz(&server.ConnzOptions{Subscriptions: true})
	if err != nil {
		t.Fatal(err)
	}
	var cmdConn, eventConn *server.ConnInfo
	for _, c := range connz.Conns {
		switch {
		case strings.HasPrefix(c.Name, "keyd serve ") && strings.HasSuffix(c.Name, " commands"):
			cmdConn = c
		case strings.HasPrefix(c.Name, "keyd serve "):
			eventConn = c
		}
	}
	if cmdConn == nil || eventConn == nil {
		t.Fatalf("want keyd's two connections, got %d connections", len(connz.Conns))
	}
	// (InMsgs: what the connection published; OutMsgs: what it received,
	// the refused requests included.)
	if len(cmdConn.Subs) != 1 || cmdConn.Subs[0] != "keyd.cmd.>" || cmdConn.InMsgs != 4 || cmdConn.OutMsgs != 6 {
		t.Errorf("the responder's connection: subscriptions %v, %d messages published, %d received; want [keyd.cmd.>], its 4 replies, 6 requests",
			cmdConn.Subs, cmdConn.InMsgs, cmdConn.OutMsgs)
	}
	for _, s := range eventConn.Subs {
		if strings.HasPrefix(s, "keyd.cmd") {
			t.Errorf("the event store's connection subscribes to %s", s)
		}
	}
}

// TestNATSURLSecretsNotPrinted (finding L1): keyd serve and keyd projections
// rebuild, given a NATS URL with a password or a token that they cannot
// reach, fail naming the URL without the secret, in their error and on
// stderr; so does the embeddable verifier's Connect.
func TestNATSURLSecretsNotPrinted(t *testing.T) {
	t.Parallel()
	for _, u := range []string{
		"nats://u:S3cret@127.0.0.1:1",
		"nats://S3cret@127.0.0.1:1",
		"nats://127.0.0.1:1,nats://u:S3cret@127.0.0.1:2",
		"nats://u:S3cret@127.0.0.1:notaport",
	} {
		for _, args := range [][]string{
			{"serve", "--http", "127.0.0.1:0", "--nats-url", u},
			{"projections", "rebuild", "--nats-url", u},
		} {
			var stdout, stderr testenv.SyncBuffer
			err := NewMain(&stdout, &stderr, func(k string) string { return serveEnv()[k] }).Run(context.Background(), args)
			if err == nil {
				t.Fatalf("keyd %v succeeded", args)
			}
			out := err.Error() + stdout.String() + stderr.String()
			if strings.Contains(out, "S3cret") || !strings.Contains(err.Error(), "xxxxx") {
				t.Errorf("keyd %v: %v\n%s%s", args[:1], err, stdout.String(), stderr.String())
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := verifier.Connect(ctx, u, "", edgeCredential())
		cancel()
		if err == nil || strings.Contains(err.Error(), "S3cret") {
			t.Errorf("verifier.Connect(%q): %v", u, err)
		}
	}
}

// TestServeWithNATSCredentials: keyd serve and the embeddable verifier
// connect to a server that demands TLS with a client certificate (a CA made
// here), to one that knows keyd only by an nkey, and to one in operator mode
// (a .creds file); without the files they fail with an error that says what
// to check.
func TestServeWithNATSCredentials(t *testing.T) {
	t.Parallel()
	f := natsconntest.NewTLS(t)
	seed, pub := natsconntest.NKeyUser(t)
	for _, tc := range []struct {
		name  string
		setup func(*server.Options)
		flags []string
		auth  natsconn.Auth
		hint  string
	}{
		{"tls", func(o *server.Options) { f.ServerTLS(t, o, true) },
			[]string{"--nats-tls-ca", f.CA, "--nats-tls-cert", f.ClientCert, "--nats-tls-key", f.ClientKey},
			natsconn.Auth{TLSCA: f.CA, TLSCert: f.ClientCert, TLSKey: f.ClientKey}, "--nats-tls-ca"},
		{"nkey", func(o *server.Options) { o.Nkeys = []*server.NkeyUser{{Nkey: pub}} },
			[]string{"--nats-nkey", seed}, natsconn.Auth{NKey: seed}, "--nats-nkey"},
		{"creds", nil, nil, natsconn.Auth{}, "--nats-creds"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			o := testenv.JetStreamOptions(t.TempDir())
			if tc.setup != nil {
				tc.setup(o)
			} else {
				creds := natsconntest.Operator(t, o)
				tc.flags, tc.auth = []string{"--nats-creds", creds}, natsconn.Auth{Creds: creds}
			}
			ns := testenv.RunServer(t, o)
			u := ns.ClientURL()
			if tc.name == "tls" {
				u = strings.Replace(u, "nats://", "tls://", 1)
			}

			// Without the files: a clear error, before anything else starts.
			var stderr testenv.SyncBuffer
			err := NewMain(&stderr, &stderr, func(k string) string { return serveEnv()[k] }).Run(context.Background(),
				[]string{"serve", "--http", "127.0.0.1:0", "--nats-url", u})
			if err == nil || !strings.Contains(err.Error(), tc.hint) {
				t.Errorf("keyd serve without %s: %v, want an error pointing to %s", tc.name, err, tc.hint)
			}
			t.Logf("without the files: %v", err)

			// With them, from the environment as well as from flags.
			env := serveEnv()
			flags := tc.flags
			if tc.name == "nkey" {
				env["KEYD_NATS_NKEY"], flags = seed, nil
			}
			k := MustStart(t, env, append([]string{"serve", "--http", "127.0.0.1:0",
				"--database-url", testenv.PostgresURL(t), "--nats-url", u}, flags...)...)
			opts, err := tc.auth.Options()
			if err != nil {
				t.Fatal(err)
			}
			nc, err := nats.Connect(u, opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			created := mustOK(t, request(t, nc, "keyd.cmd.keys.org.create", `{"name":"over `+tc.name+`"}`))
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			awaitValid(t, k.App.Verifier, created["secret"].(string))

			// The embeddable verifier: the same files through WithNATSAuth.
			if _, err := verifier.Connect(ctx, u, "", edgeCredential()); err == nil {
				t.Error("verifier.Connect without the files succeeded")
			}
			v, err := verifier.Connect(ctx, u, "", edgeCredential(), verifier.WithNATSAuth(verifier.NATSAuth{
				CredsFile: tc.auth.Creds, NKeyFile: tc.auth.NKey,
				TLSCAFile: tc.auth.TLSCA, TLSCertFile: tc.auth.TLSCert, TLSKeyFile: tc.auth.TLSKey,
			}))
			if err != nil {
				t.Fatal(err)
			}
			defer v.Close()
			if r, err := v.Verify(ctx, created["secret"].(string)); err != nil || !r.Valid {
				t.Errorf("embedded verifier: %v %v", r, err)
			}
		})
	}
}

// TestReplyPrefixFlag: --nats-reply-prefix may be repeated and
// comma-separated (also in KEYD_NATS_REPLY_PREFIX), and a prefix that
// would cover keyd's or the server's subjects is refused.
func TestReplyPrefixFlag(t *testing.T) {
	t.Parallel()
	parse := func(env map[string]string, args ...string) (Config, error) {
		var c Config
		fs := newFlagSet("serve", &c, "nats-reply-prefix")
		fs.SetOutput(&testenv.SyncBuffer{})
		err := c.parse(fs, args, func(k string) string { return env[k] })
		return c, err
	}
	c, err := parse(nil, "--nats-reply-prefix", "a.replies.,b.", "--nats-reply-prefix", "_REPLY_c.")
	if err != nil || strings.Join(c.NATSReplyPrefixes, " ") != "a.replies. b. _REPLY_c." {
		t.Errorf("flags: %q, %v", c.NATSReplyPrefixes, err)
	}
	c, err = parse(map[string]string{"KEYD_NATS_REPLY_PREFIX": "x.,y."})
	if err != nil || strings.Join(c.NATSReplyPrefixes, " ") != "x. y." {
		t.Errorf("environment: %q, %v", c.NATSReplyPrefixes, err)
	}
	for _, bad := range []string{"keyd.events.", "k", "$JS.", "a.*"} {
		if _, err := parse(nil, "--nats-reply-prefix", bad); err == nil {
			t.Errorf("--nats-reply-prefix %q accepted", bad)
		}
		if _, err := parse(map[string]string{"KEYD_NATS_REPLY_PREFIX": "ok.," + bad}); err == nil {
			t.Errorf("KEYD_NATS_REPLY_PREFIX %q accepted", bad)
		}
	}
}
