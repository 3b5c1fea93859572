package natsconn

import (
	"context"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/internal/natsconn/natsconntest"
	"github.com/keyd-dev/keyd/internal/testenv"
)

func TestRedact(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"nats://127.0.0.1:4222":                             "nats://127.0.0.1:4222",
		"nats://keyd:S3cret@127.0.0.1:4222":                 "nats://keyd:xxxxx@127.0.0.1:4222",
		"nats://S3cretToken@127.0.0.1:4222":                 "nats://xxxxx@127.0.0.1:4222",
		"nats://a:S3cret@n1:4222, nats://b:S3cret2@n2:4222": "nats://a:xxxxx@n1:4222,nats://b:xxxxx@n2:4222",
		"nats://u:S3cret@127.0.0.1:badport":                 "nats://xxxxx@127.0.0.1:badport",
		"u:S3cret@127.0.0.1:4222":                           "xxxxx@127.0.0.1:4222",
		"tls://keyd:p%40ss@host":                            "tls://keyd:xxxxx@host",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestScrub(t *testing.T) {
	t.Parallel()
	cause := errors.New(`parse "nats://u:S3cret@h:x": invalid port; token S3cretToken; p@ss`)
	for urls, secret := range map[string]string{
		"nats://u:S3cret@h:x":                        "S3cret@",
		"nats://S3cretToken@h":                       "S3cretToken",
		"nats://u:" + url.QueryEscape("p@ss") + "@h": "p@ss",
		"nats://h:1, nats://u:S3cret@h:x":            "S3cret@",
		"nats://u:S3cret@h:x:y:z":                    "S3cret",
	} {
		err := Scrub(cause, urls)
		if !errors.Is(err, cause) {
			t.Errorf("Scrub(%q) lost its cause", urls)
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("Scrub(%q) = %q still holds %q", urls, err, secret)
		}
	}
	if err := Scrub(cause, "nats://h:4222"); err != cause {
		t.Errorf("Scrub without a secret changed the error: %v", err)
	}
	err := ConnectError("connecting to NATS", "nats://u:S3cret@127.0.0.1:1", errors.New("nats: no servers available for connection"))
	if strings.Contains(err.Error(), "S3cret") || !strings.Contains(err.Error(), "nats://u:xxxxx@127.0.0.1:1") {
		t.Errorf("ConnectError: %v", err)
	}
}

// TestOptionsRefuseBadFiles: every file is checked before a connection is
// tried, and the error says which and why.
func TestOptionsRefuseBadFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk")
	if err := os.WriteFile(junk, []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f := natsconntest.NewTLS(t)
	seed, _ := natsconntest.NKeyUser(t)
	for _, tc := range []struct {
		a    Auth
		want string
	}{
		{Auth{Creds: filepath.Join(dir, "missing.creds")}, "missing.creds"},
		{Auth{Creds: junk}, "holds no user JWT"},
		{Auth{Creds: seed}, "holds no user JWT"},
		{Auth{NKey: junk}, "nkey seed file"},
		{Auth{NKey: seed, Creds: seed}, "not both"},
		{Auth{TLSCA: junk}, "certificate"},
		{Auth{TLSCA: filepath.Join(dir, "missing.pem")}, "rootCA"},
		{Auth{TLSCert: f.ClientCert}, "both or neither"},
		{Auth{TLSKey: f.ClientKey}, "both or neither"},
		{Auth{TLSCert: f.ClientCert, TLSKey: f.ServerKey}, "client certificate"},
	} {
		if _, err := tc.a.Options(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want an error with %q", tc.a, err, tc.want)
		}
	}
	if opts, err := (Auth{}).Options(); err != nil || len(opts) != 0 {
		t.Errorf("zero Auth: %v, %v", opts, err)
	}
}

// TestAuthConnects: a server demanding TLS with client certificates, one
// with an nkey user and one in operator mode with JetStream each take the
// connection Auth's options make, and refuse one without them.
func TestAuthConnects(t *testing.T) {
	t.Parallel()
	connect := func(t *testing.T, u string, a Auth) (*nats.Conn, error) {
		opts, err := a.Options()
		if err != nil {
			t.Fatal(err)
		}
		nc, err := nats.Connect(u, append(opts, nats.Timeout(5*time.Second))...)
		if err == nil {
			t.Cleanup(nc.Close)
		}
		return nc, err
	}
	t.Run("tls", func(t *testing.T) {
		t.Parallel()
		f := natsconntest.NewTLS(t)
		o := testenv.JetStreamOptions(t.TempDir())
		o.JetStream = false
		f.ServerTLS(t, o, true)
		s := testenv.RunServer(t, o)
		if _, err := connect(t, s.ClientURL(), Auth{}); err == nil {
			t.Error("connected to a TLS server with neither its CA nor a client certificate")
		}
		if _, err := connect(t, s.ClientURL(), Auth{TLSCA: f.CA}); err == nil {
			t.Error("connected to a server that verifies clients without a client certificate")
		}
		nc, err := connect(t, s.ClientURL(), Auth{TLSCA: f.CA, TLSCert: f.ClientCert, TLSKey: f.ClientKey})
		if err != nil {
			t.Fatal(err)
		}
		if st, err := nc.TLSConnectionState(); err != nil || !st.HandshakeComplete {
			t.Errorf("TLS state: %+v, %v", st, err)
		}
	})
	t.Run("nkey", func(t *testing.T) {
		t.Parallel()
		seed, pub := natsconntest.NKeyUser(t)
		o := testenv.JetStreamOptions(t.TempDir())
		o.JetStream = false
		o.Nkeys = []*server.NkeyUser{{Nkey: pub}}
		s := testenv.RunServer(t, o)
		if _, err := connect(t, s.ClientURL(), Auth{}); !errors.Is(err, nats.ErrAuthorization) {
			t.Errorf("without the seed: %v, want an authorization violation", err)
		}
		if _, err := connect(t, s.ClientURL(), Auth{NKey: seed}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("creds", func(t *testing.T) {
		t.Parallel()
		o := testenv.JetStreamOptions(t.TempDir())
		creds := natsconntest.Operator(t, o)
		s := testenv.RunServer(t, o)
		if _, err := connect(t, s.ClientURL(), Auth{}); err == nil {
			t.Error("connected to an operator-mode server without credentials")
		}
		nc, err := connect(t, s.ClientURL(), Auth{Creds: creds})
		if err != nil {
			t.Fatal(err)
		}
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := js.AccountInfo(ctx); err != nil {
			t.Errorf("JetStream for the creds user's account: %v", err)
		}
	})
}
