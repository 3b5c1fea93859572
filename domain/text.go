package domain

import (
	"fmt"
	"unicode/utf8"
)

// CheckText is keyd's one rule for the text a client gives it: every string
// field of every command, route and session (names, metadata keys and
// values, reasons, idempotency keys, actors, permission descriptions,
// session user ids, the Keyd-Command-Id header) goes through it before
// anything is appended, so whatever a command accepts every store can hold
// (PostgreSQL's text and jsonb refuse U+0000) and every UI and terminal shows
// as it is.
//
// It returns invalid_argument, with a message naming field (as the client
// knows it: "name", `metadata key "team"`, "reason"), unless s is valid
// UTF-8 holding none of:
//
//   - C0 controls U+0000–U+001F (NUL, ESC, carriage return, ...), DEL U+007F
//     and C1 controls U+0080–U+009F;
//   - the bidirectional embeddings, overrides and isolates U+202A–U+202E and
//     U+2066–U+2069, which make text display in another order than it is
//     stored.
//
// multiline allows tab (U+0009) and line feed (U+000A), for free text
// (permission descriptions and revoke reasons); carriage return is refused
// everywhere. The empty string passes: lengths are each field's own check.
func CheckText(field, s string, multiline bool) error {
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c < 0x7f { // printable ASCII: the common case
			i++
			continue
		}
		if c < utf8.RuneSelf {
			if multiline && (c == '\t' || c == '\n') {
				i++
				continue
			}
			return textError(field, rune(c), i, multiline)
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			return Errorf(EInvalid, "%s must be valid UTF-8", field)
		}
		if forbiddenRune(r) {
			return textError(field, r, i, multiline)
		}
		i += size
	}
	return nil
}

// forbiddenRune reports whether r, a non-ASCII rune, is a C1 control or a
// bidirectional control.
func forbiddenRune(r rune) bool {
	return (r >= 0x80 && r <= 0x9f) || (r >= 0x202a && r <= 0x202e) || (r >= 0x2066 && r <= 0x2069)
}

func textError(field string, r rune, at int, multiline bool) error {
	kind := "a control character"
	if r >= 0x202a {
		kind = "a bidirectional control"
	}
	allowed := "control characters (tab and line feed included) and bidirectional controls are not allowed"
	if multiline {
		allowed = "control characters other than tab and line feed, and bidirectional controls, are not allowed"
	}
	return Errorf(EInvalid, "%s holds %s (%s) at byte %d; %s", field, fmt.Sprintf("U+%04X", r), kind, at, allowed)
}
