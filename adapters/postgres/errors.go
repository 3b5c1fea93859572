package postgres

import (
	"context"
	"errors"
	"net"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/keyd-dev/keyd/domain"
)

// unavailable is a database failure the caller can retry: the server could
// not be reached or the connection broke. It is a domain unavailable error
// (HTTP 503) that keeps its cause for the logs.
type unavailable struct {
	user  *domain.Error
	cause error
}

func (e *unavailable) Error() string   { return e.user.Error() + ": " + e.cause.Error() }
func (e *unavailable) Unwrap() []error { return []error{e.user, e.cause} }

// classify marks err as unavailable when the database could not be reached
// (connection refused or broken, server shutting down or refusing
// connections, a timeout); other errors are returned as they are.
func classify(err error) error {
	if err == nil {
		return nil
	}
	var de *domain.Error
	if errors.As(err, &de) {
		return err
	}
	var ce *pgconn.ConnectError
	var pe *pgconn.PgError
	var ne net.Error
	switch {
	case errors.As(err, &ce), errors.As(err, &ne), pgconn.Timeout(err),
		errors.Is(err, context.DeadlineExceeded), pgconn.SafeToRetry(err),
		errors.As(err, &pe) && (pe.Code[:2] == "08" || pe.Code[:2] == "57"):
		return &unavailable{user: domain.Errorf(domain.EUnavailable, "the read models' database cannot be reached; retry shortly"), cause: err}
	}
	return err
}
