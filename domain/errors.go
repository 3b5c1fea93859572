// Package domain holds keyd's vocabulary and rules: the key aggregate, the
// permission catalog, commands, events, the secret format and the one error
// type. It performs no I/O of its own and reads no clock or randomness except
// what it is given; the small interfaces it consumes (EventStore,
// IdempotencyStore) are implemented elsewhere.
package domain

import (
	"context"
	"errors"
	"fmt"
	"os"
)

// Error codes. They are the contract's closed set; every error keyd returns to
// a user carries exactly one of them.
const (
	EInvalid      = "invalid_argument"    // HTTP 400
	EUnauthorized = "unauthenticated"     // HTTP 401
	EForbidden    = "permission_denied"   // HTTP 403
	ENotFound     = "not_found"           // HTTP 404
	EConflict     = "conflict"            // HTTP 409
	EPrecondition = "failed_precondition" // HTTP 412
	ETooLarge     = "too_large"           // HTTP 413
	ERateLimited  = "rate_limited"        // HTTP 429, with Retry-After
	EUnavailable  = "unavailable"         // HTTP 503
	EInternal     = "internal"            // HTTP 500
)

// Error is keyd's one error type: a code from the closed set above and a
// message a user can act on. Messages never contain secrets.
//
// Err is the internal cause, if any (a store's or a driver's error): it is
// for logs only and is never shown to users, so Error() leaves it out; reach
// it with errors.Unwrap, errors.Is or errors.As.
type Error struct {
	Code    string
	Message string
	Err     error
}

// Error returns the code and the message, never the cause.
func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Unwrap returns the internal cause (nil if there is none).
func (e *Error) Unwrap() error { return e.Err }

// Errorf returns an *Error with the given code and a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Wrap returns an *Error with the given code and a formatted message that
// keeps err as its internal cause.
func Wrap(err error, code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...), Err: err}
}

// Classify turns a failure of a dependency into the error a caller sees; what
// names the dependency as the message's subject ("the event store", "the
// read models"). An error that already carries an *Error passes unchanged;
// running out of time (context.DeadlineExceeded, context.Canceled,
// os.ErrDeadlineExceeded) is unavailable: "<what> did not answer in time;
// retry"; anything else is internal. The cause is kept in Err for the logs.
func Classify(err error, what string) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	if timedOut(err) {
		return Wrap(err, EUnavailable, "%s did not answer in time; retry", what)
	}
	return Wrap(err, EInternal, "internal error")
}

func timedOut(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		errors.Is(err, os.ErrDeadlineExceeded)
}

// ErrorCode returns the code of err: the code of the first *Error in its chain,
// "" for nil, and EInternal for anything else.
func ErrorCode(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return EInternal
}

// ErrorMessage returns the user-facing message of err. Errors that are not an
// *Error are internal: their text is not shown to users.
func ErrorMessage(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Message
	}
	return "internal error"
}

// ErrorBody is the contract's error reply, {"error": {"code", "message"}},
// as NATS replies, HTTP responses and the verifier's middleware write it.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the inside of an ErrorBody.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// ErrorBodyOf returns the reply for err: its code and its user-facing
// message (ErrorCode, ErrorMessage), never its internal cause.
func ErrorBodyOf(err error) ErrorBody {
	return ErrorBody{Error: ErrorDetail{Code: ErrorCode(err), Message: ErrorMessage(err)}}
}

// HTTPStatus maps an error code to its HTTP status, as the contract lists.
func HTTPStatus(code string) int {
	switch code {
	case EInvalid:
		return 400
	case EUnauthorized:
		return 401
	case EForbidden:
		return 403
	case ENotFound:
		return 404
	case EConflict:
		return 409
	case EPrecondition:
		return 412
	case ETooLarge:
		return 413
	case ERateLimited:
		return 429
	case EUnavailable:
		return 503
	case "":
		return 200
	}
	return 500
}

// ErrConflict is returned by an EventStore when an append's expected last
// subject sequence does not match: another writer got there first.
var ErrConflict = errors.New("eventstore: wrong last subject sequence")
