package main

import (
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/keyd-dev/keyd/adapters/natscmd"
	"github.com/keyd-dev/keyd/internal/natsconn"
	"github.com/keyd-dev/keyd/verifier"
)

// Defaults from the contract.
const (
	DefaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/keyd?sslmode=disable"
	DefaultNATSListen  = "127.0.0.1:4222"
	DefaultHTTP        = "127.0.0.1:8080"
	DefaultData        = "./.keyd"
)

// Config is keyd's configuration: every flag has a KEYD_* environment
// variable fallback (flag > environment > default).
type Config struct {
	Data                 string
	NATSListen           string
	NATSURL              string
	HTTP                 string
	DatabaseURL          string
	AdminToken           string
	Secret               string
	KeyPrefix            string
	StreamReplicas       int
	VerifierMaxStaleness time.Duration
	// LastUsedResolution: a key's last use is written at most once per
	// this much time (verifier.Config.LastUsedResolution).
	LastUsedResolution time.Duration
	WidgetOrigins      string
	LogLevel           string
	// InternalHTTP is the address of the internal listener (/metrics, the
	// detailed /readyz); empty: none, and the API listener serves both.
	InternalHTTP string
	// RateLimit is the requests a second one widget session may make (0:
	// no limit).
	RateLimit float64

	// NATSAuth holds the credentials and TLS files of every NATS
	// connection keyd serve and keyd projections rebuild make.
	NATSAuth natsconn.Auth
	// NATSReplyPrefixes are the reply-subject prefixes keyd answers
	// commands on besides _INBOX., _INBOX_ and _R_. (natscmd.ReplyAllowed).
	NATSReplyPrefixes replyPrefixes

	// explicit holds the flags given on the command line or in the
	// environment (a taken port is then an error, not a fallback).
	explicit map[string]bool
}

// flagEnv pairs each flag with its environment variable; a test checks that
// docker-compose.yml and the README only use names listed here.
var flagEnv = map[string]string{
	"data":                   "KEYD_DATA",
	"nats-listen":            "KEYD_NATS_LISTEN",
	"nats-url":               "KEYD_NATS_URL",
	"http":                   "KEYD_HTTP",
	"database-url":           "KEYD_DATABASE_URL",
	"admin-token":            "KEYD_ADMIN_TOKEN",
	"secret":                 "KEYD_SECRET",
	"key-prefix":             "KEYD_KEY_PREFIX",
	"stream-replicas":        "KEYD_STREAM_REPLICAS",
	"verifier-max-staleness": "KEYD_VERIFIER_MAX_STALENESS",
	"last-used-resolution":   "KEYD_LAST_USED_RESOLUTION",
	"widget-origins":         "KEYD_WIDGET_ORIGINS",
	"log-level":              "KEYD_LOG_LEVEL",
	"internal-http":          "KEYD_INTERNAL_HTTP",
	"rate-limit":             "KEYD_RATE_LIMIT",
	"nats-creds":             "KEYD_NATS_CREDS",
	"nats-nkey":              "KEYD_NATS_NKEY",
	"nats-tls-ca":            "KEYD_NATS_TLS_CA",
	"nats-tls-cert":          "KEYD_NATS_TLS_CERT",
	"nats-tls-key":           "KEYD_NATS_TLS_KEY",
	"nats-reply-prefix":      "KEYD_NATS_REPLY_PREFIX",
}

// natsAuthFlags are the flags of the NATS credential and TLS files, for
// every subcommand that connects to an external NATS.
var natsAuthFlags = []string{"nats-creds", "nats-nkey", "nats-tls-ca", "nats-tls-cert", "nats-tls-key"}

// newFlagSet declares the flags of one subcommand; only the named ones.
func newFlagSet(name string, c *Config, names ...string) *flag.FlagSet {
	fs := flag.NewFlagSet("keyd "+name, flag.ContinueOnError)
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	str := func(p *string, n, def, usage string) {
		if want[n] {
			fs.StringVar(p, n, def, usage+" (env "+flagEnv[n]+")")
		}
	}
	str(&c.Data, "data", DefaultData, "directory for the embedded NATS data, the generated admin token and secret")
	str(&c.NATSListen, "nats-listen", DefaultNATSListen, "address the embedded NATS server listens on")
	str(&c.NATSURL, "nats-url", "nats://127.0.0.1:4222", "NATS server URL(s), comma-separated")
	str(&c.HTTP, "http", DefaultHTTP, "HTTP listen address")
	str(&c.DatabaseURL, "database-url", DefaultDatabaseURL, "Postgres URL for the read models")
	str(&c.AdminToken, "admin-token", "", "bearer token for the HTTP admin routes")
	str(&c.Secret, "secret", "", "deployment secret (at least 32 bytes) keying the digests and widget sessions")
	str(&c.KeyPrefix, "key-prefix", "sk", "prefix of new secrets: letters, digits and _")
	str(&c.WidgetOrigins, "widget-origins", "", "comma-separated origins allowed to call the widget routes (CORS)")
	str(&c.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	str(&c.InternalHTTP, "internal-http", "", "listen address of the internal HTTP listener serving /metrics and the detailed /readyz (the API's /readyz then answers only its status)")
	if want["rate-limit"] {
		fs.Float64Var(&c.RateLimit, "rate-limit", 50, "requests a second one widget session may make, 0 for no limit; the admin token has none (env KEYD_RATE_LIMIT)")
	}
	str(&c.NATSAuth.Creds, "nats-creds", "", "NATS .creds file (user JWT and nkey seed) for every NATS connection")
	str(&c.NATSAuth.NKey, "nats-nkey", "", "NATS nkey user seed file for every NATS connection (instead of --nats-creds)")
	str(&c.NATSAuth.TLSCA, "nats-tls-ca", "", "PEM file of the CAs that sign the NATS server's certificate (turns TLS on)")
	str(&c.NATSAuth.TLSCert, "nats-tls-cert", "", "PEM client certificate for NATS (with --nats-tls-key)")
	str(&c.NATSAuth.TLSKey, "nats-tls-key", "", "PEM key of --nats-tls-cert")
	if want["nats-reply-prefix"] {
		fs.Var(&c.NATSReplyPrefixes, "nats-reply-prefix", "a reply-subject prefix keyd also answers commands on, besides _INBOX., _INBOX_ and _R_. (repeatable or comma-separated) (env KEYD_NATS_REPLY_PREFIX)")
	}
	if want["stream-replicas"] {
		fs.IntVar(&c.StreamReplicas, "stream-replicas", 1, "replicas of KEYD_EVENTS when keyd creates it (3 on a JetStream cluster) (env KEYD_STREAM_REPLICAS)")
	}
	if want["verifier-max-staleness"] {
		fs.DurationVar(&c.VerifierMaxStaleness, "verifier-max-staleness", 30*time.Second, "a verifier cut off from the stream longer than this answers unavailable (env KEYD_VERIFIER_MAX_STALENESS)")
	}
	if want["last-used-resolution"] {
		fs.DurationVar(&c.LastUsedResolution, "last-used-resolution", verifier.DefaultLastUsedResolution, "a key's last_used_at is written at most once per this much time, so it may lag the key's true last use by up to this much (env KEYD_LAST_USED_RESOLUTION)")
	}
	return fs
}

// parse parses args, then fills unset flags from the environment.
func (c *Config) parse(fs *flag.FlagSet, args []string, getenv func(string) string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	c.explicit = map[string]bool{}
	fs.Visit(func(f *flag.Flag) { c.explicit[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if c.explicit[f.Name] || err != nil {
			return
		}
		if v := getenv(flagEnv[f.Name]); v != "" {
			if e := f.Value.Set(v); e != nil {
				err = fmt.Errorf("%s=%q: %v", flagEnv[f.Name], v, e)
			}
			c.explicit[f.Name] = true
		}
	})
	return err
}

func (c *Config) widgetOrigins() []string {
	var out []string
	for _, o := range strings.Split(c.WidgetOrigins, ",") {
		if o = strings.TrimSpace(o); o != "" {
			out = append(out, strings.TrimRight(o, "/"))
		}
	}
	return out
}

// replyPrefixes is the flag value of --nats-reply-prefix: it may be repeated
// and each value may list several prefixes separated by commas; each must
// pass natscmd.CheckReplyPrefix.
type replyPrefixes []string

func (p *replyPrefixes) String() string { return strings.Join(*p, ",") }

func (p *replyPrefixes) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if err := natscmd.CheckReplyPrefix(s); err != nil {
			return err
		}
		*p = append(*p, s)
	}
	return nil
}
