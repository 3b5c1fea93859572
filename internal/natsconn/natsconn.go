// Package natsconn holds what every NATS connection keyd makes shares: the
// credential and TLS files it authenticates with (Auth), and the redaction
// of NATS URLs for errors and logs (Redact, Scrub). keyd serve, keyd
// projections rebuild and the embeddable verifier use it.
package natsconn

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// Auth names the files a NATS connection authenticates and encrypts with.
// Every field is optional; the zero value adds nothing (a URL's own user and
// password, or none, then apply).
type Auth struct {
	// Creds is a .creds file (a user JWT and its nkey seed, as `nsc` and
	// `nats` write them), for servers run in operator (JWT) mode.
	Creds string
	// NKey is a file holding an nkey user seed (SU…), for servers that
	// list the user's public nkey. At most one of Creds and NKey.
	NKey string
	// TLSCA is a PEM file of the certificate authorities the server's
	// certificate is checked against (default: the system's).
	TLSCA string
	// TLSCert and TLSKey are a PEM client certificate and its key, for
	// servers that verify clients; both or neither.
	TLSCert, TLSKey string
}

// Options returns the nats.Options for a, after checking that every file
// named can be read and holds what it should, so a mistake is reported as
// such before any connection is tried (not as a refused connection).
func (a Auth) Options() ([]nats.Option, error) {
	var opts []nats.Option
	if a.Creds != "" && a.NKey != "" {
		return nil, errors.New("NATS credentials: give a .creds file or an nkey seed file, not both")
	}
	if a.Creds != "" {
		b, err := os.ReadFile(a.Creds)
		if err != nil {
			return nil, fmt.Errorf("NATS credentials file: %w", err)
		}
		_, jwtErr := nkeys.ParseDecoratedJWT(b)
		kp, seedErr := nkeys.ParseDecoratedUserNKey(b)
		if kp != nil {
			kp.Wipe()
		}
		if jwtErr != nil || seedErr != nil || !strings.Contains(string(b), "-----BEGIN NATS USER JWT-----") {
			return nil, fmt.Errorf("NATS credentials file %s holds no user JWT and nkey seed (a .creds file as nsc writes it)", a.Creds)
		}
		opts = append(opts, nats.UserCredentials(a.Creds))
	}
	if a.NKey != "" {
		opt, err := nats.NkeyOptionFromSeed(a.NKey)
		if err != nil {
			return nil, fmt.Errorf("NATS nkey seed file %s: %w", a.NKey, err)
		}
		opts = append(opts, opt)
	}
	if (a.TLSCert == "") != (a.TLSKey == "") {
		return nil, errors.New("NATS TLS: a client certificate needs its key, and a key its certificate (give both or neither)")
	}
	if a.TLSCA != "" {
		opts = append(opts, nats.RootCAs(a.TLSCA))
	}
	if a.TLSCert != "" {
		opts = append(opts, nats.ClientCert(a.TLSCert, a.TLSKey))
	}
	// nats.RootCAs and nats.ClientCert load their files when applied: apply
	// them to scratch options to learn now whether they can.
	scratch := nats.GetDefaultOptions()
	for _, opt := range opts {
		if err := opt(&scratch); err != nil {
			return nil, fmt.Errorf("NATS TLS files: %w", err)
		}
	}
	return opts, nil
}

// Redact returns a NATS URL, or a comma-separated list of them, with every
// password replaced by xxxxx, and a user name with no password (a NATS
// token: nats://TOKEN@host) replaced too. Anything it cannot parse as a URL
// but that has userinfo (…://…@…) loses that whole part.
func Redact(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		parts[i] = redactOne(strings.TrimSpace(p))
	}
	return strings.Join(parts, ",")
}

func redactOne(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" && strings.Contains(raw, "@") {
		if at := strings.LastIndex(raw, "@"); at >= 0 {
			start := strings.Index(raw, "://")
			if start < 0 || start+3 > at {
				start = -3
			}
			return raw[:start+3] + "xxxxx" + raw[at:]
		}
		return raw
	}
	if u.User == nil {
		return raw
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	} else {
		u.User = url.User("xxxxx")
	}
	return u.String()
}

// secrets returns the passwords and tokens of urls.
func secrets(urls string) []string {
	var out []string
	for _, p := range strings.Split(urls, ",") {
		p = strings.TrimSpace(p)
		if u, err := url.Parse(p); err == nil && u.User != nil {
			if pw, has := u.User.Password(); has {
				out = append(out, pw, url.QueryEscape(pw), url.PathEscape(pw))
			} else if tok := u.User.Username(); tok != "" {
				out = append(out, tok, url.QueryEscape(tok), url.PathEscape(tok))
			}
			continue
		}
		// Unparsable: everything between :// and the last @ is secret.
		if at := strings.LastIndex(p, "@"); at >= 0 {
			start := strings.Index(p, "://") + 3
			if start < 3 || start > at {
				start = 0
			}
			info := p[start:at]
			out = append(out, info)
			if _, pw, ok := strings.Cut(info, ":"); ok {
				out = append(out, pw)
			}
		}
	}
	return out
}

// Scrub returns err with every password and token of urls removed from its
// text (errors.Is and errors.As still see err). nats.Connect's own errors
// may quote the URL, as url.Parse's do.
func Scrub(err error, urls string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	changed := false
	for _, s := range secrets(urls) {
		if s != "" && strings.Contains(msg, s) {
			msg, changed = strings.ReplaceAll(msg, s, "xxxxx"), true
		}
	}
	if !changed {
		return err
	}
	return &scrubbed{msg: msg, err: err}
}

type scrubbed struct {
	msg string
	err error
}

func (e *scrubbed) Error() string { return e.msg }
func (e *scrubbed) Unwrap() error { return e.err }

// ConnectError is the error of a failed connection to urls: the URLs
// redacted, the cause scrubbed of their secrets.
func ConnectError(what, urls string, err error) error {
	return fmt.Errorf("%s at %s: %w", what, Redact(urls), Scrub(err, urls))
}
