package domain_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/keyd-dev/keyd/domain"
)

func TestWrapKeepsTheCauseOutOfTheMessage(t *testing.T) {
	t.Parallel()
	cause := errors.New("dial tcp 10.0.0.1:4222: connection refused")
	err := domain.Wrap(cause, domain.EUnavailable, "the %s is unavailable; retry", "event store")
	if !errors.Is(err, cause) || errors.Unwrap(err) != cause {
		t.Fatalf("Wrap lost its cause: Unwrap = %v", errors.Unwrap(err))
	}
	if got, want := err.Error(), "unavailable: the event store is unavailable; retry"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	// Wrapped further (as callers do with %w), the outer *Error still answers.
	outer := fmt.Errorf("revoke: %w", err)
	if domain.ErrorCode(outer) != domain.EUnavailable || strings.Contains(domain.ErrorMessage(outer), "refused") {
		t.Errorf("ErrorCode/ErrorMessage of %v = %q/%q", outer, domain.ErrorCode(outer), domain.ErrorMessage(outer))
	}
}

func TestClassify(t *testing.T) {
	t.Parallel()
	user := domain.Errorf(domain.ENotFound, "key not found")
	tests := []struct {
		name     string
		err      error
		code     string
		message  string
		keepsErr bool // the result unwraps to the input
	}{
		{"nil", nil, "", "", false},
		{"already an *Error", user, domain.ENotFound, "key not found", false},
		{"an *Error deeper in the chain", fmt.Errorf("load: %w", user), domain.ENotFound, "key not found", false},
		{"deadline", context.DeadlineExceeded, domain.EUnavailable, "the read models did not answer in time; retry", true},
		{"canceled, wrapped", fmt.Errorf("query: %w", context.Canceled), domain.EUnavailable, "the read models did not answer in time; retry", true},
		{"I/O deadline", fmt.Errorf("read: %w", os.ErrDeadlineExceeded), domain.EUnavailable, "the read models did not answer in time; retry", true},
		{"anything else", errors.New("syntax error at or near SELECT"), domain.EInternal, "internal error", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := domain.Classify(tt.err, "the read models")
			if tt.err == nil {
				if got != nil {
					t.Fatalf("Classify(nil) = %v", got)
				}
				return
			}
			if domain.ErrorCode(got) != tt.code || domain.ErrorMessage(got) != tt.message {
				t.Errorf("Classify = %q %q, want %q %q", domain.ErrorCode(got), domain.ErrorMessage(got), tt.code, tt.message)
			}
			if tt.keepsErr && !errors.Is(got, tt.err) {
				t.Errorf("Classify(%v) lost its cause", tt.err)
			}
			if !tt.keepsErr && got != tt.err {
				t.Errorf("Classify changed an error that already carries an *Error: %v", got)
			}
		})
	}
}

func TestErrorBodyOf(t *testing.T) {
	t.Parallel()
	tests := []struct {
		err  error
		want string
	}{
		{domain.Errorf(domain.EConflict, "key %s was changed concurrently", "key_1"),
			`{"error":{"code":"conflict","message":"key key_1 was changed concurrently"}}`},
		{domain.Wrap(errors.New("secret cause"), domain.EUnavailable, "retry"),
			`{"error":{"code":"unavailable","message":"retry"}}`},
		{errors.New("secret cause"), `{"error":{"code":"internal","message":"internal error"}}`},
	}
	for _, tt := range tests {
		b, err := json.Marshal(domain.ErrorBodyOf(tt.err))
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != tt.want {
			t.Errorf("ErrorBodyOf(%v) = %s, want %s", tt.err, b, tt.want)
		}
	}
}

func TestCheckIDs(t *testing.T) {
	t.Parallel()
	const goodKey = "key_01ARZ3NDEKTSV4RRFFQ69G5FAV"
	tests := []struct {
		name    string
		check   func(string) error
		good    string
		bad     string
		mention string
	}{
		{"org", domain.CheckOrgID, "org_1", "org 1", "^[A-Za-z0-9_-]{1,64}$"},
		{"key", domain.CheckKeyID, goodKey, "key_1", "26-character ULID"},
		{"slug", domain.CheckSlug, "keys:read", "Keys:Read", "^[a-z0-9][a-z0-9_.:-]{0,127}$"},
	}
	for _, tt := range tests {
		if err := tt.check(tt.good); err != nil {
			t.Errorf("%s: Check(%q) = %v", tt.name, tt.good, err)
		}
		err := tt.check(tt.bad)
		var de *domain.Error
		if !errors.As(err, &de) || de.Code != domain.EInvalid {
			t.Fatalf("%s: Check(%q) = %v, want invalid_argument", tt.name, tt.bad, err)
		}
		if !strings.Contains(de.Message, tt.mention) || !strings.Contains(de.Message, fmt.Sprintf("%q", tt.bad)) {
			t.Errorf("%s: message %q does not name %q and %s", tt.name, de.Message, tt.bad, tt.mention)
		}
	}
}
