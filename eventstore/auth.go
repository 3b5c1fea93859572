package eventstore

import (
	"bytes"
	"strconv"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/domain"
)

// Authentic events. keyd's event writer signs every event it appends (see
// domain.EventSigner and the header domain.SignatureHeader); everything that
// reads the stream (a Tail, and the JetStream store's Last and Next) sets
// aside a message without a valid signature: it is never applied and never
// halts a reader; readers count it (keyd_events_rejected_total) and log it.
//
// Streams written before signing was introduced: EnsureStream records in the
// stream's configuration metadata (MetadataSignedFrom) the first sequence
// keyd signs: 1 for a new stream, the last sequence + 1 for a stream that
// has none. Unsigned messages below it were written by an older keyd and are
// accepted; unsigned messages from it on are set aside. Only keyd's NATS
// account may change the stream's configuration. A stream without the marker
// (no keyd of this version has ensured it yet) has every unsigned message
// accepted. A message with a signature that does not verify is set aside
// wherever it is.

// MetadataSignedFrom is the stream metadata entry that holds the first
// sequence keyd signs (decimal).
const MetadataSignedFrom = "keyd.signed_from"

// Reasons a reader sets a message aside (the label reason of
// keyd_events_rejected_total).
const (
	RejectUnsigned     = "unsigned"      // no signature, at or after the signing marker
	RejectBadSignature = "bad_signature" // a signature that does not verify
	RejectVersion      = "version"       // a signed event whose version is not its aggregate's last + 1
	RejectRevoked      = "revoked"       // a change to a revoked key
)

// Rejection is one message a reader set aside.
type Rejection struct {
	Sequence uint64
	Subject  string
	Reason   string // one of the Reject… constants
}

// Auth checks the signatures of stream messages.
type Auth struct {
	key        domain.EventKey
	signedFrom uint64 // 0: the stream has no marker
}

// NewAuth returns the check of messages signed for key, unsigned ones
// accepted below signedFrom (0: everywhere, a stream with no marker).
func NewAuth(key domain.EventKey, signedFrom uint64) Auth {
	return Auth{key: key, signedFrom: signedFrom}
}

// SignedFrom returns the first sequence from which unsigned messages are
// set aside (0: none is).
func (a Auth) SignedFrom() uint64 { return a.signedFrom }

// Check returns "" when the message at seq on subject with payload data and
// signature header sig is keyd's, else why it is set aside
// (RejectUnsigned or RejectBadSignature).
func (a Auth) Check(seq uint64, subject string, data []byte, sig string) string {
	if sig == "" {
		if a.signedFrom == 0 || seq < a.signedFrom {
			return ""
		}
		return RejectUnsigned
	}
	if !a.key.Verify(subject, data, sig) {
		return RejectBadSignature
	}
	return ""
}

// SignedFromOf reads the signing marker of a stream's configuration (0 when
// it has none or it does not parse).
func SignedFromOf(cfg jetstream.StreamConfig) uint64 {
	v, err := strconv.ParseUint(cfg.Metadata[MetadataSignedFrom], 10, 64)
	if err != nil {
		return 0
	}
	return v
}

// Invariants every reader enforces on apply, the same way as a signature:
// an event that breaks one is set aside (counted, logged, not applied, not
// halting). They refuse a replayed old event (keyd signed it, but for
// another place in its aggregate's history) and a change to a revoked key.

// KeyInvariant returns why a key event carrying version is set aside given
// what the reader has applied for that key (known=false: nothing; then the
// event must be the key's first, version 1), or "".
func KeyInvariant(known bool, lastVersion int64, revoked bool, version int64) string {
	switch {
	case !known && version == 1:
		return ""
	case !known:
		return RejectVersion
	case revoked:
		return RejectRevoked
	case version != lastVersion+1:
		return RejectVersion
	}
	return ""
}

// NoticeInvariant is KeyInvariant for a notice (domain.Event.IsNotice:
// key.expiring, key.expired), which leaves the key's version as it was: it
// is set aside unless the reader knows the key, the key is not revoked (no
// notice is ever sent for a revoked key) and the notice carries the version
// the reader last applied. A notice replayed at that version can only set
// the notice bookkeeping again: every other change bumps the version.
func NoticeInvariant(known bool, lastVersion int64, revoked bool, version int64) string {
	switch {
	case !known:
		return RejectVersion
	case revoked:
		return RejectRevoked
	case version != lastVersion:
		return RejectVersion
	}
	return ""
}

// KeyEventInvariant is the invariant of key event type typ: NoticeInvariant
// for a notice, else KeyInvariant.
func KeyEventInvariant(typ string, known bool, lastVersion int64, revoked bool, version int64) string {
	if (domain.Event{Type: typ}).IsNotice() {
		return NoticeInvariant(known, lastVersion, revoked, version)
	}
	return KeyInvariant(known, lastVersion, revoked, version)
}

// OrgInvariant returns why an organization event (org.policy_changed,
// org.keys_counted) carrying the organization's version is set aside given
// the version the reader has applied for that organization (0: none), or
// "": it must be the previous + 1. Organization events were signed from
// the start, so there is no event without a version.
func OrgInvariant(lastVersion, version int64) string {
	if version == lastVersion+1 {
		return ""
	}
	return RejectVersion
}

// CatalogInvariant returns why a catalog event carrying version is set
// aside given the catalog version the reader has applied, or "". An event
// without a version (0; written before catalogs had versions, so only ever
// accepted unsigned below the signing marker) is applied only while the
// catalog has no version yet.
func CatalogInvariant(lastVersion, version int64) string {
	if version == 0 && lastVersion == 0 || version == lastVersion+1 {
		return ""
	}
	return RejectVersion
}

// RoleCatalogInvariant returns why a role catalog event (role.defined,
// role.retired) carrying version is set aside given the role catalog
// version the reader has applied, or "": the rule of CatalogInvariant,
// version = previous + 1 (role events always carry one; an event without
// one is applied only while the role catalog has no version yet, as for the
// permission catalog).
func RoleCatalogInvariant(lastVersion, version int64) string {
	return CatalogInvariant(lastVersion, version)
}

// Chained reports whether a signed event's payload data names, as its
// prev_sequence (domain.Event.PrevSequence), the guard the stream stored
// with it (header Nats-Expected-Last-Subject-Sequence, or the store's own
// record of it). keyd's appends always do. A replay of a signed event later
// on its subject cannot: JetStream refuses a publish whose guard does not
// hold, and the old guard no longer does. So the command side, which reads
// one message and not the history, can tell a replay from keyd's event.
//
// data must be a payload keyd signed (json.Marshal of domain.Event, where
// the member prev_sequence precedes data and cannot occur, unescaped, in
// the string members before it). Signed data without the member (not an
// envelope: the store's own tests append opaque payloads) is chained.
func Chained(data []byte, guard string) bool {
	const member = `"prev_sequence":`
	i := bytes.Index(data, []byte(member))
	if i < 0 {
		return true // not an envelope of keyd's domain (tests of the store's mechanics)
	}
	if guard == "" {
		return false
	}
	rest := data[i+len(member):]
	n := 0
	for n < len(rest) && rest[n] >= '0' && rest[n] <= '9' {
		n++
	}
	return n > 0 && string(rest[:n]) == guard
}
