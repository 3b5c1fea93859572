// Package domain holds keyd's vocabulary and rules: the key aggregate, the
// permission catalog, commands, events, the secret format and the one error
// type. It performs no I/O of its own and reads no clock or randomness except
// what it is given; the small interfaces it consumes (EventStore,
// IdempotencyStore) are implemented elsewhere.
package domain

import (
	"errors"
	"fmt"
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
	EUnavailable  = "unavailable"         // HTTP 503
	EInternal     = "internal"            // HTTP 500
)

// Error is keyd's one error type: a code from the closed set above and a
// message a user can act on. Messages never contain secrets.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Errorf returns an *Error with the given code and a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
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
