package commands_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/keyd-dev/keyd/adapters/commands"
	"github.com/keyd-dev/keyd/domain"
)

func TestDecode(t *testing.T) {
	t.Parallel()
	exp := time.Date(2030, 1, 2, 15, 4, 5, 0, time.UTC)
	big := `{"name": "` + strings.Repeat("x", commands.MaxBytes) + `"}`
	// Exactly MaxBytes: a long idempotency key padded with spaces.
	exact := `{"name":"n"}` + strings.Repeat(" ", commands.MaxBytes-len(`{"name":"n"}`))
	tests := []struct {
		name     string
		payload  string
		want     domain.CreateKey
		wantCode string
		mention  []string // substrings of the error message
	}{
		{
			name:    "valid",
			payload: `{"name":"CI deploy","permissions":["posts:read"],"expires_at":"2030-01-02T15:04:05Z","metadata":{"team":"ops"},"actor":{"type":"user","id":"u1"},"idempotency_key":"abc"}`,
			want: domain.CreateKey{Name: "CI deploy", Permissions: []string{"posts:read"}, ExpiresAt: &exp,
				Metadata: map[string]string{"team": "ops"}, IdempotencyKey: "abc", Meta: domain.Meta{Actor: &domain.Actor{Type: "user", ID: "u1"}}},
		},
		{name: "empty payload is {}", payload: ``, want: domain.CreateKey{}},
		{name: "whitespace payload is {}", payload: " \n\t", want: domain.CreateKey{}},
		{name: "empty object", payload: `{}`, want: domain.CreateKey{}},
		{name: "surrounding whitespace", payload: "\n {\"name\":\"a\"} \n", want: domain.CreateKey{Name: "a"}},
		{name: "exactly 64 KiB", payload: exact, want: domain.CreateKey{Name: "n"}},
		{name: "malformed JSON", payload: `{"name":}`, wantCode: domain.EInvalid, mention: []string{"not valid JSON"}},
		{name: "truncated JSON", payload: `{"name":"a"`, wantCode: domain.EInvalid, mention: []string{"truncated"}},
		{name: "unknown field", payload: `{"name":"a","colour":"red"}`, wantCode: domain.EInvalid, mention: []string{`"colour"`}},
		{name: "command_id is not a body field", payload: `{"command_id":"x"}`, wantCode: domain.EInvalid, mention: []string{`"command_id"`}},
		{name: "wrong type", payload: `{"name": 5}`, wantCode: domain.EInvalid, mention: []string{`"name"`, "string"}},
		{name: "wrong type nested", payload: `{"actor": {"type": 5}}`, wantCode: domain.EInvalid, mention: []string{`"actor.type"`}},
		{name: "wrong type actor", payload: `{"actor": 5}`, wantCode: domain.EInvalid, mention: []string{`"actor"`, `{"type", "id"}`}},
		{name: "wrong type metadata", payload: `{"metadata": []}`, wantCode: domain.EInvalid, mention: []string{`"metadata"`}},
		{name: "bad time", payload: `{"expires_at": "tomorrow"}`, wantCode: domain.EInvalid, mention: []string{"RFC 3339"}},
		{name: "trailing object", payload: `{"name":"a"} {"name":"b"}`, wantCode: domain.EInvalid, mention: []string{"one JSON object"}},
		{name: "trailing garbage", payload: `{"name":"a"}x`, wantCode: domain.EInvalid, mention: []string{"one JSON object"}},
		{name: "array instead of object", payload: `[{"name":"a"}]`, wantCode: domain.EInvalid, mention: []string{"JSON object"}},
		{name: "string instead of object", payload: `"a"`, wantCode: domain.EInvalid, mention: []string{"JSON object"}},
		{name: "number instead of object", payload: `5`, wantCode: domain.EInvalid, mention: []string{"JSON object"}},
		{name: "over 64 KiB", payload: big, wantCode: domain.ETooLarge, mention: []string{"65536"}},
		{name: "64 KiB + 1 of whitespace", payload: exact + " ", wantCode: domain.ETooLarge},
		{name: "invalid UTF-8", payload: "{\"name\":\"\xff\"}", wantCode: domain.EInvalid, mention: []string{"UTF-8"}},
		{name: "invalid UTF-8 outside strings", payload: "{\"name\":\"a\"}\xc3", wantCode: domain.EInvalid, mention: []string{"UTF-8"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got domain.CreateKey
			err := commands.Decode([]byte(tt.payload), &got)
			if code := domain.ErrorCode(err); code != tt.wantCode {
				t.Fatalf("Decode error = %v, want code %q", err, tt.wantCode)
			}
			if err != nil {
				var de *domain.Error
				if !errors.As(err, &de) {
					t.Fatalf("error %T is not a *domain.Error", err)
				}
				for _, m := range tt.mention {
					if !strings.Contains(de.Message, m) {
						t.Errorf("message %q does not mention %s", de.Message, m)
					}
				}
				if strings.Contains(de.Message, "Meta") {
					t.Errorf("message %q names a Go type, not the JSON field", de.Message)
				}
				if strings.Contains(de.Message, strings.Repeat("x", 100)) {
					t.Errorf("message echoes the payload")
				}
				return
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("decoded %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestDecodeEachCommand(t *testing.T) {
	t.Parallel()
	v := int64(3)
	g := int64(60)
	name := "new"
	tests := []struct {
		payload string
		into    any
		want    any
	}{
		{`{"key_id":"key_x","reason":"leaked"}`, &domain.RevokeKey{}, &domain.RevokeKey{KeyID: "key_x", Reason: "leaked"}},
		{`{"key_id":"k","permissions":[],"expected_version":3}`, &domain.SetPermissions{}, &domain.SetPermissions{KeyID: "k", Permissions: []string{}, ExpectedVersion: &v}},
		{`{"key_id":"k","name":"new"}`, &domain.UpdateKey{}, &domain.UpdateKey{KeyID: "k", Name: &name}},
		{`{"key_id":"k","grace_period_seconds":60}`, &domain.RotateKey{}, &domain.RotateKey{KeyID: "k", GracePeriodSeconds: &g}},
		{`{"slug":"a","description":"A"}`, &domain.DefinePermission{}, &domain.DefinePermission{Slug: "a", Description: "A"}},
		{`{"slug":"a"}`, &domain.RetirePermission{}, &domain.RetirePermission{Slug: "a"}},
	}
	for _, tt := range tests {
		if err := commands.Decode([]byte(tt.payload), tt.into); err != nil {
			t.Errorf("%T: %v", tt.into, err)
			continue
		}
		if !reflect.DeepEqual(tt.into, tt.want) {
			t.Errorf("%T: decoded %+v, want %+v", tt.into, tt.into, tt.want)
		}
	}
	// Wrong types are named per field.
	for _, tt := range []struct {
		payload, field string
		into           any
	}{
		{`{"expected_version":"3"}`, "expected_version", &domain.SetPermissions{}},
		{`{"expected_version":1.5}`, "expected_version", &domain.SetPermissions{}},
		{`{"grace_period_seconds":"60"}`, "grace_period_seconds", &domain.RotateKey{}},
		{`{"permissions":"a"}`, "permissions", &domain.SetPermissions{}},
		{`{"name":5}`, "name", &domain.UpdateKey{}},
		{`{"key_id":["k"]}`, "key_id", &domain.RevokeKey{}},
		{`{"slug":true}`, "slug", &domain.RetirePermission{}},
	} {
		err := commands.Decode([]byte(tt.payload), tt.into)
		if domain.ErrorCode(err) != domain.EInvalid || !strings.Contains(domain.ErrorMessage(err), `"`+tt.field+`"`) {
			t.Errorf("%T %s: %v, want invalid_argument naming %q", tt.into, tt.payload, err, tt.field)
		}
	}
}

func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		``, `{}`, `[]`, `null`, `{"name":"a","permissions":["x"],"expires_at":"2030-01-01T00:00:00Z"}`,
		`{"key_id":"k","expected_version":1}`, `{"grace_period_seconds":-1}`, `{"actor":{"type":"user","id":"u"}}`,
		`{"metadata":{"a":"b"}}`, `{"a":1}`, `{"name":5}`, `{} {}`, "\xff", `{"expires_at":"x"}`,
		`{"expected_version":1e400}`, `{"name":"\ud800"}`,
	} {
		f.Add([]byte(s))
	}
	news := []func() any{
		func() any { return &domain.CreateKey{} },
		func() any { return &domain.RevokeKey{} },
		func() any { return &domain.SetPermissions{} },
		func() any { return &domain.UpdateKey{} },
		func() any { return &domain.RotateKey{} },
		func() any { return &domain.DefinePermission{} },
		func() any { return &domain.RetirePermission{} },
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, n := range news {
			v := n()
			err := commands.Decode(data, v)
			if err == nil {
				continue
			}
			var de *domain.Error
			if !errors.As(err, &de) {
				t.Fatalf("%T: error %T %v is not a *domain.Error", v, err, err)
			}
			if de.Code != domain.EInvalid && de.Code != domain.ETooLarge {
				t.Fatalf("%T: code %q, want invalid_argument or too_large", v, de.Code)
			}
			if de.Message == "" {
				t.Fatalf("%T: empty message", v)
			}
			if (de.Code == domain.ETooLarge) != (len(data) > commands.MaxBytes) {
				t.Fatalf("%T: code %q for %d bytes", v, de.Code, len(data))
			}
		}
	})
}
