package commands_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/keyd-dev/keyd/adapters/commands"
	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/internal/testenv"
	"github.com/keyd-dev/keyd/internal/testworld"
)

// TestRunAnswersUnavailableAtOnceWhileNATSIsDown: with the event store's
// connection down (reconnecting), every command answers unavailable at
// once, saying why, instead of waiting out its deadline; once the
// connection is back, commands run again.
func TestRunAnswersUnavailableAtOnceWhileNATSIsDown(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	srv := testenv.RunServer(t, testenv.JetStreamOptions(dir))
	nc, err := nats.Connect(srv.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	w := testworld.EventStreamOn(t, nc, nil)
	r := &commands.Runner{Service: w.Service(testworld.Secret), StoreConnected: nc.IsConnected}
	ctx := t.Context()
	if _, err := r.Run(ctx, commands.Define, "", []byte(`{"slug":"posts:read","description":"read"}`), commands.Transport{}); err != nil {
		t.Fatal(err)
	}

	port := srv.Addr().(*net.TCPAddr).Port
	testenv.ShutdownServer(srv)
	testenv.WaitFor(t, 5*time.Second, "the client to notice", func() bool { return !nc.IsConnected() })
	for _, c := range []struct{ name, org, payload string }{
		{commands.Create, "org_1", `{"name":"k","permissions":["posts:read"]}`},
		{commands.Revoke, "org_1", `{"key_id":"key_01HZX0000000000000000000000"}`},
		{commands.Define, "", `{"slug":"posts:write","description":"write"}`},
	} {
		cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		start := time.Now()
		_, err := r.Run(cctx, c.name, c.org, []byte(c.payload), commands.Transport{})
		took := time.Since(start)
		cancel()
		wantCode(t, err, domain.EUnavailable, "NATS", "retry")
		if took > 100*time.Millisecond {
			t.Errorf("%s answered after %s while NATS was down, want at once", c.name, took)
		}
	}

	opts := testenv.JetStreamOptions(dir)
	opts.Port = port
	testenv.RunServer(t, opts)
	testenv.WaitFor(t, 10*time.Second, "the client to reconnect", nc.IsConnected)
	testenv.WaitFor(t, 30*time.Second, "a create to succeed once NATS is back", func() bool {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, err := r.Run(cctx, commands.Create, "org_1", []byte(`{"name":"k","permissions":["posts:read"]}`), commands.Transport{})
		return err == nil
	})
}
