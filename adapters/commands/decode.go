package commands

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"strings"
	"unicode/utf8"

	"github.com/keyd-dev/keyd/domain"
)

// MaxBytes is the largest request body keyd reads (64 KiB): a command's
// payload on NATS or HTTP, and the bodies of the HTTP verify and session
// routes. Larger ones are too_large.
const MaxBytes = 64 << 10

// CommandIDHeader is the NATS and HTTP header a client sets to make the
// retries of a command idempotent: retrying with the same id never appends
// twice.
const CommandIDHeader = "Keyd-Command-Id"

// CheckSize returns too_large when data is over MaxBytes. Decode checks it
// too; a transport calls it first when the size must be reported before
// anything else (the NATS subject, say).
func CheckSize(data []byte) error {
	if len(data) > MaxBytes {
		return domain.Errorf(domain.ETooLarge, "request is %d bytes; at most %d bytes are accepted", len(data), MaxBytes)
	}
	return nil
}

// Decode strictly decodes one JSON object into v: unknown fields, fields of
// the wrong type, a member name repeated in one object, a member name that
// matches a field only when case is ignored, trailing data and payloads over
// MaxBytes are errors (invalid_argument or too_large) whose message names
// the problem. An empty payload decodes as {}. It decodes every JSON body
// keyd takes: commands, verify requests, session requests.
func Decode(data []byte, v any) error {
	if err := CheckSize(data); err != nil {
		return err
	}
	if len(bytes.TrimSpace(data)) == 0 {
		data = []byte("{}")
	}
	if !utf8.Valid(data) {
		return domain.Errorf(domain.EInvalid, "request body must be UTF-8 JSON")
	}
	if err := checkMembers(data, reflect.TypeOf(v)); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return decodeError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return domain.Errorf(domain.EInvalid, "request body must hold exactly one JSON object")
	}
	return nil
}

// decodeError turns an encoding/json error into an invalid_argument whose
// message a client can act on (never the Go type names).
func decodeError(err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return domain.Errorf(domain.EInvalid, "request body is not valid JSON (at byte %d): %v", syn.Offset, syn)
	case errors.As(err, &typ):
		if typ.Field == "" {
			return domain.Errorf(domain.EInvalid, "request body must be a JSON object")
		}
		// encoding/json names an embedded struct in the path ("Meta.actor"
		// for domain.Meta's actor); the client knows only the JSON names.
		field := strings.TrimPrefix(typ.Field, "Meta.")
		return domain.Errorf(domain.EInvalid, "field %q must be %s, not a JSON %s", field, describeType(typ.Type.String()), typ.Value)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return domain.Errorf(domain.EInvalid, "request body is truncated JSON")
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return domain.Errorf(domain.EInvalid, "unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
	case strings.Contains(err.Error(), "parsing time"):
		return domain.Errorf(domain.EInvalid, "times must be RFC 3339, for example 2030-01-02T15:04:05Z")
	}
	return domain.Errorf(domain.EInvalid, "request body is not valid: %v", err)
}

// describeType names a Go field type in JSON terms.
func describeType(t string) string {
	switch t {
	case "string", "*string":
		return "a string"
	case "[]string":
		return "an array of strings"
	case "map[string]string":
		return "an object of string values"
	case "int64", "*int64":
		return "an integer"
	case "time.Time", "*time.Time":
		return "an RFC 3339 time string"
	case "domain.Actor", "*domain.Actor":
		return `an object {"type", "id"}`
	}
	return "of another type"
}
