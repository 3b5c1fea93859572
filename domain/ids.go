package domain

import (
	"io"
	"time"

	"github.com/oklog/ulid/v2"
)

// KeyIDPrefix starts every key id: "key_" followed by a 26-character ULID.
const KeyIDPrefix = "key_"

// ValidOrgID reports whether s is an organization id: ^[A-Za-z0-9_-]{1,64}$.
func ValidOrgID(s string) bool {
	if len(s) < 1 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(isAlnum(c) || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// ValidKeyID reports whether s is "key_" plus a valid ULID.
func ValidKeyID(s string) bool {
	if len(s) != len(KeyIDPrefix)+ulid.EncodedSize || s[:len(KeyIDPrefix)] != KeyIDPrefix {
		return false
	}
	_, err := ulid.ParseStrict(s[len(KeyIDPrefix):])
	return err == nil
}

// ValidSlug reports whether s is a permission slug: ^[a-z0-9][a-z0-9_.:-]{0,127}$.
func ValidSlug(s string) bool {
	if len(s) < 1 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		lowerOrDigit := (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
		if i == 0 && !lowerOrDigit {
			return false
		}
		if !(lowerOrDigit || c == '_' || c == '.' || c == ':' || c == '-') {
			return false
		}
	}
	return true
}

// CheckOrgID returns invalid_argument unless s is an organization id.
func CheckOrgID(s string) error {
	if !ValidOrgID(s) {
		return Errorf(EInvalid, "organization id %q must match ^[A-Za-z0-9_-]{1,64}$", s)
	}
	return nil
}

// CheckKeyID returns invalid_argument unless s is a key id.
func CheckKeyID(s string) error {
	if !ValidKeyID(s) {
		return Errorf(EInvalid, "key id %q is not a key id (key_ followed by a 26-character ULID)", s)
	}
	return nil
}

// CheckSlug returns invalid_argument unless s is a permission slug.
func CheckSlug(s string) error {
	if !ValidSlug(s) {
		return Errorf(EInvalid, "permission slug %q must match ^[a-z0-9][a-z0-9_.:-]{0,127}$", s)
	}
	return nil
}

// NewULID returns a ULID string for time t with entropy from r.
func NewULID(t time.Time, r io.Reader) (string, error) {
	id, err := ulid.New(ulid.Timestamp(t), r)
	if err != nil {
		return "", err
	}
	return id.String(), nil
}

func isAlnum(c byte) bool {
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
}
