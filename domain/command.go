package domain

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"time"
	"unicode/utf8"
)

// MaxCommandBytes is the largest command payload keyd reads (64 KiB); larger
// ones are too_large.
const MaxCommandBytes = 64 << 10

// CreateKey asks for a new key in an organization.
type CreateKey struct {
	Name           string            `json:"name"`
	Permissions    []string          `json:"permissions"`
	ExpiresAt      *time.Time        `json:"expires_at"`
	Metadata       map[string]string `json:"metadata"`
	Actor          *Actor            `json:"actor"`
	IdempotencyKey string            `json:"idempotency_key"`
	CommandID      string            `json:"-"`
}

// RevokeKey asks to revoke a key; revoking a revoked key changes nothing.
type RevokeKey struct {
	KeyID     string `json:"key_id"`
	Reason    string `json:"reason"`
	Actor     *Actor `json:"actor"`
	CommandID string `json:"-"`
}

// SetPermissions replaces the permissions of a key. With ExpectedVersion it
// applies only to that version of the key and is never retried.
type SetPermissions struct {
	KeyID           string   `json:"key_id"`
	Permissions     []string `json:"permissions"`
	ExpectedVersion *int64   `json:"expected_version"`
	Actor           *Actor   `json:"actor"`
	CommandID       string   `json:"-"`
}

// UpdateKey renames a key or replaces its metadata (absent fields stay).
type UpdateKey struct {
	KeyID     string            `json:"key_id"`
	Name      *string           `json:"name"`
	Metadata  map[string]string `json:"metadata"`
	Actor     *Actor            `json:"actor"`
	CommandID string            `json:"-"`
}

// RotateKey replaces a key by a new one with the same name, permissions and
// metadata; the old key expires after the grace period.
type RotateKey struct {
	KeyID              string `json:"key_id"`
	GracePeriodSeconds *int64 `json:"grace_period_seconds"`
	Actor              *Actor `json:"actor"`
	CommandID          string `json:"-"`
}

// DefinePermission adds a permission to the catalog or changes its
// description.
type DefinePermission struct {
	Slug        string `json:"slug"`
	Description string `json:"description"`
	Actor       *Actor `json:"actor"`
	CommandID   string `json:"-"`
}

// RetirePermission retires a permission: it can no longer be granted and
// verification stops reporting it.
type RetirePermission struct {
	Slug      string `json:"slug"`
	Actor     *Actor `json:"actor"`
	CommandID string `json:"-"`
}

// DecodeCommand strictly decodes one JSON object into v: unknown fields,
// fields of the wrong type, trailing data and payloads over MaxCommandBytes
// are errors (invalid_argument or too_large) whose message names the
// problem. An empty payload decodes as {}.
func DecodeCommand(data []byte, v any) error {
	if len(data) > MaxCommandBytes {
		return Errorf(ETooLarge, "request is %d bytes; at most %d bytes are accepted", len(data), MaxCommandBytes)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		data = []byte("{}")
	}
	if !utf8.Valid(data) {
		return Errorf(EInvalid, "request body must be UTF-8 JSON")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return decodeError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Errorf(EInvalid, "request body must hold exactly one JSON object")
	}
	return nil
}

func decodeError(err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return Errorf(EInvalid, "request body is not valid JSON (at byte %d): %v", syn.Offset, syn)
	case errors.As(err, &typ):
		if typ.Field == "" {
			return Errorf(EInvalid, "request body must be a JSON object")
		}
		return Errorf(EInvalid, "field %q must be %s, not a JSON %s", typ.Field, describeType(typ.Type.String()), typ.Value)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return Errorf(EInvalid, "request body is truncated JSON")
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return Errorf(EInvalid, "unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
	case strings.Contains(err.Error(), "parsing time"):
		return Errorf(EInvalid, "times must be RFC 3339, for example 2030-01-02T15:04:05Z")
	}
	return Errorf(EInvalid, "request body is not valid: %v", err)
}

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

// CheckActor validates an actor given by a caller.
func CheckActor(a *Actor) error {
	if a == nil {
		return nil
	}
	switch a.Type {
	case "user", "service", "system":
	default:
		return Errorf(EInvalid, `actor.type must be "user", "service" or "system", got %q`, a.Type)
	}
	if a.ID == "" || len(a.ID) > 200 || !utf8.ValidString(a.ID) {
		return Errorf(EInvalid, "actor.id must be 1 to 200 bytes of UTF-8")
	}
	return nil
}
