package postgres

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keyd-dev/keyd/domain"
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
