package postgres

import (
	"context"
	"errors"
	"io"
	"net"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/keyd-dev/keyd/domain"
)

// classify is the one PostgreSQL-specific step of error classification: a
// failure to reach the database (connection refused or broken, server
// shutting down or refusing connections, a timeout) becomes unavailable
// (HTTP 503, retry), with err kept as its cause for the logs. That includes
// a query cut off mid-way by a crashing server: the connection ends with an
// unexpected EOF or a reset, or was already closed by the driver. Other
// errors are returned as they are; the edge classifies them
// (domain.Classify).
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
		errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF), errors.Is(err, pgconn.ErrConnClosed),
		errors.Is(err, net.ErrClosed), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE),
		errors.As(err, &pe) && (pe.Code[:2] == "08" || pe.Code[:2] == "57"):
		return domain.Wrap(err, domain.EUnavailable, "the read models' database cannot be reached; retry shortly")
	}
	return err
}
