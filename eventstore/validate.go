package eventstore

import (
	"errors"
	"fmt"
	"strings"

	"github.com/keyd-dev/keyd/domain"
)

// HeaderEventType carries the event type on every stored message.
const HeaderEventType = "Keyd-Event-Type"

// subjectPrefix is domain.EventSubjects without its trailing ">".
var subjectPrefix = strings.TrimSuffix(domain.EventSubjects, ">")

// checkSubject reports whether subject is a literal subject of the event
// stream: under keyd.events., no empty tokens, no wildcards, no whitespace.
func checkSubject(subject string) error {
	if !strings.HasPrefix(subject, subjectPrefix) || len(subject) == len(subjectPrefix) {
		return fmt.Errorf("eventstore: subject %q is not under %s", subject, domain.EventSubjects)
	}
	for tok := range strings.SplitSeq(subject, ".") {
		if tok == "" || tok == "*" || tok == ">" || strings.ContainsAny(tok, " \t\r\n") {
			return fmt.Errorf("eventstore: subject %q is not a literal subject", subject)
		}
	}
	return nil
}

// checkAppends validates what both stores require of an append, before any
// I/O: at least one message; each with a literal subject of the stream, a
// MsgID and a Type; no two messages on one subject (each is guarded by the
// state before the append, so a second write to the same subject could never
// pass its guard) and no MsgID twice.
func checkAppends(msgs []domain.AppendMsg) error {
	if len(msgs) == 0 {
		return errors.New("eventstore: append of no messages")
	}
	if len(msgs) > maxBatch {
		return fmt.Errorf("eventstore: append of %d messages; at most %d at once", len(msgs), maxBatch)
	}
	subjects := make(map[string]struct{}, len(msgs))
	ids := make(map[string]struct{}, len(msgs))
	for i, m := range msgs {
		if err := checkSubject(m.Subject); err != nil {
			return err
		}
		if m.MsgID == "" || strings.ContainsAny(m.MsgID, "\r\n") {
			return fmt.Errorf("eventstore: message %d (subject %s) has no valid MsgID", i, m.Subject)
		}
		if m.Type == "" || strings.ContainsAny(m.Type, "\r\n") {
			return fmt.Errorf("eventstore: message %d (subject %s) has no valid Type", i, m.Subject)
		}
		if _, dup := subjects[m.Subject]; dup {
			return fmt.Errorf("eventstore: two messages for subject %s in one append", m.Subject)
		}
		subjects[m.Subject] = struct{}{}
		if _, dup := ids[m.MsgID]; dup {
			return fmt.Errorf("eventstore: MsgID %s twice in one append", m.MsgID)
		}
		ids[m.MsgID] = struct{}{}
	}
	return nil
}

// maxBatch is the server's default limit on the size of an atomic batch.
const maxBatch = 1000

// conflict wraps domain.ErrConflict with where it happened (and the server's
// error, if any, so errors.As still finds it).
func conflict(subject string, expected uint64, cause error) error {
	if cause != nil {
		return fmt.Errorf("%w (subject %s, expected last sequence %d): %w", domain.ErrConflict, subject, expected, cause)
	}
	return fmt.Errorf("%w (subject %s, expected last sequence %d)", domain.ErrConflict, subject, expected)
}
