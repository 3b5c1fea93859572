// Package migrations holds keyd's PostgreSQL schema as numbered SQL files and
// applies them.
//
// Files are named NNNN_what.sql and applied in lexical order, each once, each
// in its own transaction together with its row in schema_migrations. A file
// is never edited after it has been applied anywhere: a change goes into a
// new file. Apply refuses to run when an applied file's checksum changed.
package migrations

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

//go:embed *.sql
var files embed.FS

// lockID is the session advisory lock that serializes migration runs of all
// keyd processes on one database ("keydmigr" in ASCII).
const lockID int64 = 0x6b6579646d696772

// Apply applies every embedded migration that the database has not applied
// yet and returns the versions it applied (file names without ".sql"), in
// order; none when the schema is current.
//
// The run holds a session advisory lock on one connection of pool, so
// processes starting together apply each file exactly once: the others wait
// and then find nothing to do. A file that fails is rolled back with its
// schema_migrations row, and Apply stops there. An applied file whose content
// changed since is an error naming the file. log may be nil.
func Apply(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) (applied []string, err error) {
	return apply(ctx, pool, log, files)
}

type migration struct {
	file     string // e.g. 0001_read_models.sql
	version  string // e.g. 0001_read_models
	sql      string
	checksum string // hex SHA-256 of the file
}

func load(fsys fs.FS) ([]migration, error) {
	names, err := fs.Glob(fsys, "*.sql")
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	out := make([]migration, 0, len(names))
	for _, name := range names {
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, fmt.Errorf("migrations: read %s: %w", name, err)
		}
		sum := sha256.Sum256(b)
		out = append(out, migration{
			file:     name,
			version:  strings.TrimSuffix(path.Base(name), ".sql"),
			sql:      string(b),
			checksum: hex.EncodeToString(sum[:]),
		})
	}
	return out, nil
}

func apply(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger, fsys fs.FS) (applied []string, err error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	all, err := load(fsys)
	if err != nil {
		return nil, err
	}

	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrations: connect: %w", err)
	}
	defer conn.Release()
	waitStart := time.Now()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", lockID); err != nil {
		return nil, fmt.Errorf("migrations: take the migration lock: %w", err)
	}
	if d := time.Since(waitStart); d > time.Second {
		log.Info("waited for another process to finish migrating", "waited", d.Round(time.Millisecond))
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, uerr := conn.Exec(uctx, "SELECT pg_advisory_unlock($1)", lockID); uerr != nil {
			// A connection that may still hold the lock must not go back
			// to the pool; closing it releases the lock.
			_ = conn.Conn().Close(uctx)
		}
	}()

	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    text PRIMARY KEY,
		checksum   text NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now()
	)`); err != nil {
		return nil, fmt.Errorf("migrations: create schema_migrations: %w", err)
	}

	rows, err := conn.Query(ctx, "SELECT version, checksum FROM schema_migrations")
	if err != nil {
		return nil, fmt.Errorf("migrations: read schema_migrations: %w", err)
	}
	type row struct{ Version, Checksum string }
	done, err := pgx.CollectRows(rows, pgx.RowToStructByPos[row])
	if err != nil {
		return nil, fmt.Errorf("migrations: read schema_migrations: %w", err)
	}
	have := make(map[string]string, len(done))
	for _, r := range done {
		have[r.Version] = r.Checksum
	}

	known := make(map[string]bool, len(all))
	for _, m := range all {
		known[m.version] = true
		if sum, ok := have[m.version]; ok && sum != m.checksum {
			return nil, fmt.Errorf("migrations: %s was changed after it was applied to this database "+
				"(applied checksum %s, file checksum %s); restore the file as it was and put the change in a new migration file",
				m.file, short(sum), short(m.checksum))
		}
	}
	for _, r := range done {
		if !known[r.Version] {
			// Applied by a newer keyd: this binary's schema is a prefix of it.
			log.Warn("database has a migration this keyd does not know; is a newer keyd running?", "version", r.Version)
		}
	}

	for _, m := range all {
		if _, ok := have[m.version]; ok {
			continue
		}
		start := time.Now()
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			// No arguments: the simple protocol, so a file may hold many statements.
			if _, err := tx.Exec(ctx, m.sql); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)", m.version, m.checksum)
			return err
		})
		if err != nil {
			return applied, fmt.Errorf("migrations: apply %s (rolled back): %w", m.file, err)
		}
		applied = append(applied, m.version)
		log.Info("applied migration", "version", m.version, "took", time.Since(start).Round(time.Millisecond))
	}
	return applied, nil
}

func short(sum string) string {
	if len(sum) > 12 {
		return sum[:12]
	}
	return sum
}
