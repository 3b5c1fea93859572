package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// runDev runs everything in one process: an embedded NATS server with
// JetStream (TCP, so the nats CLI works), the Postgres read models, the
// command responders, the verifier and the HTTP server.
func (m *Main) runDev(ctx context.Context, args []string) error {
	var c Config
	fs := newFlagSet("dev", &c, "data", "nats-listen", "http", "database-url", "admin-token", "secret",
		"key-prefix", "verifier-max-staleness", "last-used-resolution", "widget-origins", "log-level", "nats-reply-prefix", "internal-http", "rate-limit")
	fs.SetOutput(m.Stderr)
	if err := c.parse(fs, args, m.Getenv); err != nil {
		return err
	}
	if err := checkLoopbackListen("nats-listen", c.NATSListen); err != nil {
		return err
	}
	if c.RateLimit < 0 {
		return fmt.Errorf("--rate-limit must be 0 (no limit) or more requests a second, got %g", c.RateLimit)
	}
	c.StreamReplicas = 1
	log := m.logger(c.LogLevel)

	if err := os.MkdirAll(c.Data, 0o700); err != nil {
		return fmt.Errorf("creating the data directory %s: %w", c.Data, err)
	}
	var err error
	if c.AdminToken == "" {
		if c.AdminToken, err = keptSecret(filepath.Join(c.Data, "admin-token"), "kat_"); err != nil {
			return err
		}
	}
	if c.Secret == "" {
		if c.Secret, err = keptSecret(filepath.Join(c.Data, "secret"), ""); err != nil {
			return err
		}
	}
	if len(c.Secret) < 32 {
		return errors.New("the deployment secret (--secret / KEYD_SECRET) must be at least 32 bytes")
	}

	natsLn, err := listenWithFallback(c.NATSListen, c.explicit["nats-listen"])
	if err != nil {
		return fmt.Errorf("NATS listen address: %w", err)
	}
	natsAddr := natsLn.Addr().(*net.TCPAddr)
	natsLn.Close() // nats-server binds it itself; we only probed it
	ns, err := startEmbeddedNATS(filepath.Join(c.Data, "nats"), natsAddr.IP.String(), natsAddr.Port)
	if err != nil {
		return err
	}
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()

	httpLn, err := listenWithFallback(c.HTTP, c.explicit["http"])
	if err != nil {
		return fmt.Errorf("HTTP listen address: %w", err)
	}
	// The event store's connection and the command responder's, as in
	// keyd serve.
	nc, err := nats.Connect(ns.ClientURL(), nats.InProcessServer(ns), nats.Name("keyd dev"), nats.MaxReconnects(-1))
	if err != nil {
		httpLn.Close()
		return fmt.Errorf("connecting to the embedded NATS server: %w", err)
	}
	cmdNC, err := nats.Connect(ns.ClientURL(), nats.InProcessServer(ns), nats.Name("keyd dev commands"), nats.MaxReconnects(-1))
	if err != nil {
		nc.Close()
		httpLn.Close()
		return fmt.Errorf("connecting to the embedded NATS server: %w", err)
	}
	app := &App{cfg: c, log: log, dev: true, secret: []byte(c.Secret), NATSURL: ns.ClientURL()}
	defer app.Close()
	if err := app.start(ctx, nc, cmdNC, httpLn); err != nil {
		httpLn.Close()
		return err
	}
	base := "http://" + app.HTTPAddr
	fmt.Fprintf(m.Stdout, `keyd dev is running.

  HTTP:         %s
  NATS:         %s
  Admin token:  %s
  Widget demo:  %s
  Data:         %s

Try:  nats --server %s req keyd.cmd.permissions.define '{"slug":"posts:read","description":"Read posts"}'
      curl -H "Authorization: Bearer %s" %s/v1/permissions
Stop with Ctrl-C.
`, base, app.NATSURL, c.AdminToken, app.DemoURL, c.Data, app.NATSURL, c.AdminToken, base)
	if m.Started != nil {
		m.Started(app)
	}
	<-ctx.Done()
	fmt.Fprintln(m.Stdout, "keyd dev: shutting down")
	return nil
}

// startEmbeddedNATS starts a JetStream-enabled nats-server on host:port with
// its store under dir.
func startEmbeddedNATS(dir, host string, port int) (*server.Server, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	ns, err := server.NewServer(&server.Options{
		ServerName: "keyd-dev", Host: host, Port: port,
		JetStream: true, StoreDir: dir, NoSigs: true, NoLog: true,
		MaxPayload: 1 << 20,
	})
	if err != nil {
		return nil, fmt.Errorf("embedded NATS server: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(15 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("embedded NATS server did not start on %s:%d", host, port)
	}
	return ns, nil
}

// listenWithFallback listens on addr. If the port is taken and the address
// was not given explicitly, it falls back to a free port on the same host;
// an explicit address that is taken is an error.
func listenWithFallback(addr string, explicit bool) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err == nil {
		return ln, nil
	}
	if explicit {
		return nil, fmt.Errorf("cannot listen on %s (given explicitly): %w", addr, err)
	}
	host, _, splitErr := net.SplitHostPort(addr)
	if splitErr != nil {
		return nil, err
	}
	ln, err2 := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err2 != nil {
		return nil, fmt.Errorf("cannot listen on %s (%v) nor on a free port: %w", addr, err, err2)
	}
	return ln, nil
}

// keptSecret reads a generated secret from path, or generates one (32
// random bytes, hex, after prefix) and keeps it there with mode 0600.
func keptSecret(path, prefix string) (string, error) {
	if b, err := os.ReadFile(path); err == nil {
		if s := strings.TrimSpace(string(b)); s != "" {
			return s, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("reading %s: %w", path, err)
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", err
	}
	s := prefix + hex.EncodeToString(raw[:])
	if err := os.WriteFile(path, []byte(s+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("keeping a generated secret in %s: %w", path, err)
	}
	return s, nil
}
