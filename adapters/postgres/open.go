// Package postgres is keyd's PostgreSQL adapter: opening the database and
// reading the read models (keys, audit events, permissions, checkpoints)
// that the projector writes.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// defaultConnectTimeout bounds each connection attempt when the URL sets no
// connect_timeout, so an address that drops packets fails instead of hanging.
const defaultConnectTimeout = 10 * time.Second

// Open connects a pool to the database at url (a postgres:// URL or a
// key=value DSN) and checks that it answers.
//
// If the database does not exist (SQLSTATE 3D000), Open connects to the
// "postgres" database on the same server as the same user, creates it, and
// connects again; several processes may do this at once.
//
// Errors never contain the URL's password. When no server answers, the error
// names the address tried and says what to do about it.
func Open(ctx context.Context, url string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// pgx redacts the password in its parse errors; scrub anyway.
		return nil, scrub(fmt.Errorf("database URL is not valid: %w", err), url, "")
	}
	password := cfg.ConnConfig.Password
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = defaultConnectTimeout
	}

	pool, err := connect(ctx, cfg)
	if err == nil {
		return pool, nil
	}
	if !isSQLState(err, "3D000") { // invalid_catalog_name: no such database
		return nil, describe(err, cfg, url, password)
	}
	if err := createDatabase(ctx, cfg); err != nil {
		return nil, describe(err, cfg, url, password)
	}
	pool, err = connect(ctx, cfg)
	if err != nil {
		return nil, describe(err, cfg, url, password)
	}
	return pool, nil
}

// connect builds a pool from cfg and pings it.
func connect(ctx context.Context, cfg *pgxpool.Config) (*pgxpool.Pool, error) {
	pool, err := pgxpool.NewWithConfig(ctx, cfg.Copy())
	if err != nil {
		return nil, err
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return pool, nil
}

// createDatabase creates cfg's database, connected to the "postgres"
// database on the same server. A database created meanwhile by another
// process is fine.
func createDatabase(ctx context.Context, cfg *pgxpool.Config) error {
	name := cfg.ConnConfig.Database
	admin := cfg.ConnConfig.Copy()
	admin.Database = "postgres"
	conn, err := pgx.ConnectConfig(ctx, admin)
	if err != nil {
		return fmt.Errorf("database %q does not exist, and creating it failed: connect to database \"postgres\": %w", name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	// Another process creating it at the same moment shows as
	// duplicate_database or, when both passed the existence check, as a
	// unique violation on pg_database.
	if err != nil && !isSQLState(err, "42P04") && !isSQLState(err, "23505") {
		if isSQLState(err, "42501") { // insufficient_privilege
			return fmt.Errorf("database %q does not exist, and user %q may not create it: create it (CREATE DATABASE) or point KEYD_DATABASE_URL at an existing one: %w",
				name, cfg.ConnConfig.User, err)
		}
		return fmt.Errorf("database %q does not exist, and creating it failed: %w", name, err)
	}
	return nil
}

// describe turns a connection error into one a user can act on, without the
// password. The original error stays reachable with errors.Is/As.
func describe(err error, cfg *pgxpool.Config, rawURL, password string) error {
	if cause, ok := unreachable(err, cfg); ok {
		msg := fmt.Sprintf("no PostgreSQL server answers at %s (database %q): %s; "+
			"set KEYD_DATABASE_URL, or start PostgreSQL: ./scripts/dev.sh installs and starts it",
			addresses(cfg), cfg.ConnConfig.Database, cause)
		return scrub(&redactedError{msg: msg, err: err}, rawURL, password)
	}
	return scrub(fmt.Errorf("open database %s: %w", redactURL(rawURL), err), rawURL, password)
}

// unreachable reports whether err means that no server answered (as opposed
// to a server that refused or failed the request), and why in a few words.
func unreachable(err error, cfg *pgxpool.Config) (cause string, ok bool) {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return "", false
	}
	var dnsErr *net.DNSError
	var netErr net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused", true
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "host unreachable", true
	case errors.Is(err, syscall.ENOENT):
		return "no such socket", true
	case errors.As(err, &dnsErr):
		return fmt.Sprintf("cannot resolve host %q", dnsErr.Name), true
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return "timed out", true
	}
	return "", false
}

// addresses lists the host:port pairs (or socket paths) cfg tries.
func addresses(cfg *pgxpool.Config) string {
	one := func(host string, port uint16) string {
		if strings.HasPrefix(host, "/") {
			return host + "/.s.PGSQL." + strconv.Itoa(int(port))
		}
		return net.JoinHostPort(host, strconv.Itoa(int(port)))
	}
	list := []string{one(cfg.ConnConfig.Host, cfg.ConnConfig.Port)}
	for _, fb := range cfg.ConnConfig.Fallbacks {
		if a := one(fb.Host, fb.Port); a != list[len(list)-1] {
			list = append(list, a)
		}
	}
	return strings.Join(list, ", ")
}

// redactURL returns a postgres:// URL with its password replaced, or a
// placeholder for anything else (a key=value DSN may hold a password too).
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme == "" {
		return "(key=value DSN)"
	}
	q := u.Query()
	if q.Has("password") {
		q.Set("password", "xxxxx")
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}

// redactedError carries err with every occurrence of secret removed from its
// text; Unwrap still gives the original for errors.Is/As.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// scrub removes password (and, for a URL, its password) from err's text.
func scrub(err error, rawURL, password string) error {
	msg := err.Error()
	secrets := []string{password}
	if u, perr := url.Parse(rawURL); perr == nil {
		if p, ok := u.User.Password(); ok {
			secrets = append(secrets, p, url.QueryEscape(p), url.PathEscape(p))
		}
		if p := u.Query().Get("password"); p != "" {
			secrets = append(secrets, p, url.QueryEscape(p))
		}
	}
	for _, s := range secrets {
		if len(s) > 0 {
			msg = strings.ReplaceAll(msg, s, "xxxxx")
		}
	}
	return &redactedError{msg: msg, err: err}
}

func isSQLState(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
}
