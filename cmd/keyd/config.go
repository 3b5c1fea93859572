package main

import (
	"flag"
	"fmt"
	"strings"
	"time"
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
	WidgetOrigins        string
	LogLevel             string
	LeakSigningKeys      string

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
	"widget-origins":         "KEYD_WIDGET_ORIGINS",
	"log-level":              "KEYD_LOG_LEVEL",
	"leak-signing-keys":      "KEYD_LEAK_SIGNING_KEYS",
}

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
	str(&c.LeakSigningKeys, "leak-signing-keys", "", "file of public keys (GitHub's {\"public_keys\": [...]} format) that leak reports to POST /v1/leaks may be signed with")
	if want["stream-replicas"] {
		fs.IntVar(&c.StreamReplicas, "stream-replicas", 1, "replicas of KEYD_EVENTS when keyd creates it (3 on a JetStream cluster) (env KEYD_STREAM_REPLICAS)")
	}
	if want["verifier-max-staleness"] {
		fs.DurationVar(&c.VerifierMaxStaleness, "verifier-max-staleness", 30*time.Second, "a verifier cut off from the stream longer than this answers unavailable (env KEYD_VERIFIER_MAX_STALENESS)")
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
