package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/internal/testenv"
)

// TestUnreachableDatabaseIsUnavailable: reads on a database nobody answers
// for fail with code unavailable (HTTP 503, retry), keeping the cause.
func TestUnreachableDatabaseIsUnavailable(t *testing.T) {
	t.Parallel()
	pool, err := pgxpool.New(context.Background(), "postgres://postgres@127.0.0.1:1/keyd?sslmode=disable&connect_timeout=2")
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	r := NewReadModel(pool, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _, err = r.ListKeys(ctx, "org", KeyFilter{})
	if got := domain.ErrorCode(err); got != domain.EUnavailable {
		t.Fatalf("ListKeys on an unreachable database: code %q (%v), want unavailable", got, err)
	}
	var ce *pgconn.ConnectError
	if !errors.As(err, &ce) {
		t.Fatalf("the cause is lost: %v", err)
	}
	if _, err := r.AppliedSequence(ctx); domain.ErrorCode(err) != domain.EUnavailable {
		t.Fatalf("AppliedSequence: %v", err)
	}
}

func TestClassifyLeavesOtherErrorsAlone(t *testing.T) {
	t.Parallel()
	for _, err := range []error{
		errors.New("boom"),
		&pgconn.PgError{Code: "42P01"},
		domain.Errorf(domain.ENotFound, "x"),
	} {
		if got := classify(err); got != err {
			t.Errorf("classify(%v) = %v, want it unchanged", err, got)
		}
	}
	if got := domain.ErrorCode(classify(&pgconn.PgError{Code: "57P01"})); got != domain.EUnavailable {
		t.Errorf("admin shutdown: %q", got)
	}
}

// TestReadCutMidQueryIsUnavailable: a read in flight when the database's
// connection breaks without a word (a server crash: here a proxy on the
// way closes it) is unavailable (503, retry), not internal.
func TestReadCutMidQueryIsUnavailable(t *testing.T) {
	t.Parallel()
	_, direct := newReadModel(t) // migrated database
	u, err := url.Parse(direct.Config().ConnString())
	if err != nil {
		t.Fatal(err)
	}
	proxy := testenv.NewProxy(t, u.Host)
	u.Host = proxy.Addr()
	ctx := testCtx(t)
	pool, err := Open(ctx, u.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	r := NewReadModel(pool, nil)
	if _, err := r.AppliedSequence(ctx); err != nil {
		t.Fatal(err)
	}
	// Hold the checkpoint table so the read waits on the server, then cut.
	tx, err := direct.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `LOCK TABLE projection_checkpoints IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { _, err := r.AppliedSequence(ctx); errc <- err }()
	time.Sleep(200 * time.Millisecond) // the read is in flight
	proxy.Cut()
	select {
	case err := <-errc:
		if got := domain.ErrorCode(err); got != domain.EUnavailable {
			t.Fatalf("a read cut mid-query: code %q (%v), want unavailable", got, err)
		}
		t.Logf("cut read: %v (cause: %v)", err, errors.Unwrap(err))
	case <-time.After(10 * time.Second):
		t.Fatal("the cut read did not return")
	}
}

func TestClassifyConnectionLevelErrors(t *testing.T) {
	t.Parallel()
	for _, err := range []error{
		fmt.Errorf("read the read models' applied sequence: %w", io.ErrUnexpectedEOF),
		fmt.Errorf("x: %w", pgconn.ErrConnClosed),
		fmt.Errorf("x: %w", syscall.ECONNRESET),
		&pgconn.PgError{Code: "57P02"}, // crash shutdown
	} {
		if got := domain.ErrorCode(classify(err)); got != domain.EUnavailable {
			t.Errorf("classify(%v): code %q, want unavailable", err, got)
		}
	}
}
