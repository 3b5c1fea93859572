package domain

import (
	"crypto/ed25519"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"strings"
)

// Authentic events: every event keyd appends carries the header
// SignatureHeader, the standard base64 of an Ed25519 signature over
// subject + "\n" + payload by the event key pair, derived from the
// deployment secret (KEYD_SECRET) under its own label, so that it is
// independent of the digest key and the widget session key.
const (
	// SignatureHeader is the message header that carries an event's
	// signature.
	SignatureHeader = "Keyd-Signature"
	// EventSigningLabel derives the event signing seed (DeriveKey).
	EventSigningLabel = "keyd event signing v1"
	// DigestLabel derives the digest key (DeriveKey).
	DigestLabel = "keyd key digest v1"
)

// EventSigner signs events. Only keyd's event writer holds one.
type EventSigner struct {
	priv ed25519.PrivateKey
	pub  EventKey
}

// NewEventSigner derives the event key pair from the deployment secret:
// ed25519.NewKeyFromSeed(DeriveKey(deploymentSecret, EventSigningLabel)).
func NewEventSigner(deploymentSecret []byte) *EventSigner {
	priv := ed25519.NewKeyFromSeed(DeriveKey(deploymentSecret, EventSigningLabel))
	return &EventSigner{priv: priv, pub: EventKey{pub: priv.Public().(ed25519.PublicKey)}}
}

// Sign returns the value of SignatureHeader for payload on subject.
func (s *EventSigner) Sign(subject string, payload []byte) string {
	return base64.StdEncoding.EncodeToString(ed25519.Sign(s.priv, signedBytes(subject, payload)))
}

// PublicKey returns the key that checks this signer's signatures.
func (s *EventSigner) PublicKey() EventKey { return s.pub }

// EventKey is the public event key: it checks signatures and cannot make
// them. The zero EventKey accepts no signature.
type EventKey struct{ pub ed25519.PublicKey }

// ParseEventKey returns the EventKey of a 32-byte Ed25519 public key.
func ParseEventKey(b []byte) (EventKey, error) {
	if len(b) != ed25519.PublicKeySize {
		return EventKey{}, errors.New("domain: an event key is 32 bytes")
	}
	return EventKey{pub: ed25519.PublicKey(append([]byte(nil), b...))}, nil
}

// IsZero reports whether k is the zero EventKey.
func (k EventKey) IsZero() bool { return len(k.pub) == 0 }

// Bytes returns the 32 bytes of the public key (nil for the zero key).
func (k EventKey) Bytes() []byte { return append([]byte(nil), k.pub...) }

// Verify reports whether sig (a SignatureHeader value) is a valid signature
// of payload on subject.
func (k EventKey) Verify(subject string, payload []byte, sig string) bool {
	if len(k.pub) != ed25519.PublicKeySize || sig == "" {
		return false
	}
	raw, err := base64.StdEncoding.DecodeString(sig)
	if err != nil || len(raw) != ed25519.SignatureSize {
		return false
	}
	return ed25519.Verify(k.pub, signedBytes(subject, payload), raw)
}

func signedBytes(subject string, payload []byte) []byte {
	b := make([]byte, 0, len(subject)+1+len(payload))
	b = append(append(append(b, subject...), '\n'), payload...)
	return b
}

// Verifier credentials: what an embedded verifier needs and no more: the
// digest key (to look keys up) and the public event key (to check events).
// Nothing in one signs events or widget sessions, and neither the deployment
// secret nor any other key derived from it can be computed from one.
//
// Encoding: "kvc_" + base64url (no padding) of
//
//	version (1 byte, 1) | digest key (32 bytes) | event public key (32 bytes) | CRC32-IEEE of the previous bytes (4 bytes, big-endian)
const (
	VerifierCredentialPrefix = "kvc_"
	credentialVersion        = 1
	credentialLen            = 1 + 32 + ed25519.PublicKeySize + 4
)

// VerifierCredential is a parsed verifier credential.
type VerifierCredential struct {
	digestKey [32]byte
	eventKey  EventKey
}

// NewVerifierCredential derives the verifier credential of a deployment
// secret.
func NewVerifierCredential(deploymentSecret []byte) VerifierCredential {
	var c VerifierCredential
	copy(c.digestKey[:], DeriveKey(deploymentSecret, DigestLabel))
	c.eventKey = NewEventSigner(deploymentSecret).PublicKey()
	return c
}

// String encodes the credential (kvc_…).
func (c VerifierCredential) String() string {
	b := make([]byte, 0, credentialLen)
	b = append(b, credentialVersion)
	b = append(b, c.digestKey[:]...)
	b = append(b, c.eventKey.pub...)
	b = binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(b))
	return VerifierCredentialPrefix + base64.RawURLEncoding.EncodeToString(b)
}

// ParseVerifierCredential decodes a kvc_… credential (surrounding white
// space ignored). Errors never contain the credential.
func ParseVerifierCredential(s string) (VerifierCredential, error) {
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, VerifierCredentialPrefix) {
		return VerifierCredential{}, errors.New("domain: a verifier credential starts with " + VerifierCredentialPrefix + " (keyd verifier-credential prints one)")
	}
	b, err := base64.RawURLEncoding.DecodeString(s[len(VerifierCredentialPrefix):])
	if err != nil || len(b) != credentialLen {
		return VerifierCredential{}, errors.New("domain: the verifier credential is malformed (truncated or not base64url)")
	}
	sum := binary.BigEndian.Uint32(b[credentialLen-4:])
	if subtle.ConstantTimeEq(int32(sum), int32(crc32.ChecksumIEEE(b[:credentialLen-4]))) != 1 {
		return VerifierCredential{}, errors.New("domain: the verifier credential's checksum does not match (mistyped or truncated)")
	}
	if b[0] != credentialVersion {
		return VerifierCredential{}, errors.New("domain: the verifier credential has an unknown version; upgrade this program")
	}
	var c VerifierCredential
	copy(c.digestKey[:], b[1:33])
	c.eventKey = EventKey{pub: ed25519.PublicKey(append([]byte(nil), b[33:33+ed25519.PublicKeySize]...))}
	return c, nil
}

// Digester returns the digester of the credential's digest key: the same
// digests as NewDigester of the deployment secret.
func (c VerifierCredential) Digester() *Digester { return newDigesterFromKey(c.digestKey[:]) }

// EventKey returns the public event key of the credential.
func (c VerifierCredential) EventKey() EventKey { return c.eventKey }
