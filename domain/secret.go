package domain

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"hash/crc32"
	"io"
	"math/big"
	"unsafe"
)

// The secret format, after GitHub's token scheme:
//
//	<prefix>_<body><checksum>
//
// prefix:   1 to 32 of [A-Za-z0-9_] (configurable, default "sk"),
// body:     32 bytes (256 bits) from the injected random source, base62, 43 characters,
// checksum: CRC32 (IEEE) of "<prefix>_<body>", base62, 6 characters.
//
// A secret whose checksum does not match is malformed and can be rejected
// without any lookup; scanners can match the shape.
const (
	secretBodyLen     = 43
	secretChecksumLen = 6
	secretTailLen     = secretBodyLen + secretChecksumLen
	// MaxPrefixLen bounds the configurable prefix.
	MaxPrefixLen = 32
	// MaxSecretLen is the longest well-formed secret.
	MaxSecretLen = MaxPrefixLen + 1 + secretTailLen
	// DefaultPrefix is the key prefix when none is configured.
	DefaultPrefix = "sk"
)

const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// ValidPrefix reports whether p can prefix secrets: 1 to 32 of [A-Za-z0-9_].
func ValidPrefix(p string) bool {
	if len(p) < 1 || len(p) > MaxPrefixLen {
		return false
	}
	for i := 0; i < len(p); i++ {
		if !isAlnum(p[i]) && p[i] != '_' {
			return false
		}
	}
	return true
}

// NewSecret draws 256 bits from r and returns a secret with the given prefix.
func NewSecret(prefix string, r io.Reader) (string, error) {
	if !ValidPrefix(prefix) {
		return "", Errorf(EInvalid, "key prefix %q must be 1 to %d letters, digits or underscores", prefix, MaxPrefixLen)
	}
	var raw [32]byte
	if _, err := io.ReadFull(r, raw[:]); err != nil {
		return "", err
	}
	n := new(big.Int).SetBytes(raw[:])
	body := make([]byte, secretBodyLen)
	sixtyTwo := big.NewInt(62)
	mod := new(big.Int)
	for i := secretBodyLen - 1; i >= 0; i-- {
		n.DivMod(n, sixtyTwo, mod)
		body[i] = base62[mod.Int64()]
	}
	s := prefix + "_" + string(body)
	var sum [secretChecksumLen]byte
	encodeChecksum(crc32.ChecksumIEEE([]byte(s)), &sum)
	return s + string(sum[:]), nil
}

func encodeChecksum(c uint32, out *[secretChecksumLen]byte) {
	v := uint64(c)
	for i := secretChecksumLen - 1; i >= 0; i-- {
		out[i] = base62[v%62]
		v /= 62
	}
}

// ValidSecret reports whether s has the secret's shape and a matching
// checksum. It does not allocate.
func ValidSecret(s string) bool {
	if len(s) < 1+1+secretTailLen || len(s) > MaxSecretLen {
		return false
	}
	sep := len(s) - secretTailLen - 1
	if s[sep] != '_' || !ValidPrefix(s[:sep]) {
		return false
	}
	// A table lookup per character and no branch on the characters: a
	// branch per character class mispredicts every few characters of a
	// random secret, which made this loop cost more than the digest.
	var bad byte
	for i := sep + 1; i < len(s); i++ {
		bad |= notAlnum[s[i]]
	}
	if bad != 0 {
		return false
	}
	var sum [secretChecksumLen]byte
	encodeChecksum(crc32.ChecksumIEEE(stringBytes(s[:len(s)-secretChecksumLen])), &sum)
	return subtle.ConstantTimeCompare(sum[:], stringBytes(s[len(s)-secretChecksumLen:])) == 1
}

// notAlnum[c] is 1 for every byte c that isAlnum rejects.
var notAlnum = func() (t [256]byte) {
	for c := range t {
		if !isAlnum(byte(c)) {
			t[c] = 1
		}
	}
	return t
}()

// SecretPrefix returns the prefix of a well-formed secret.
func SecretPrefix(s string) string {
	return s[:len(s)-secretTailLen-1]
}

// Mask returns what may be shown of a secret after creation: its prefix and
// last four characters, for example "sk_…a1B2".
func Mask(secret string) string {
	if len(secret) < 2+secretTailLen { // shorter than a 1-character prefix, "_" and the tail
		return "…"
	}
	return SecretPrefix(secret) + "_…" + secret[len(secret)-4:]
}

// Digest is the keyed digest under which a secret is stored and looked up:
// HMAC-SHA-256 with a key derived from the deployment secret.
type Digest [32]byte

// Digester computes keyed digests. Its zero value is unusable; build one with
// NewDigester. It is safe for concurrent use and does not allocate.
type Digester struct {
	ipad, opad [64]byte
}

// NewDigester derives the digest key from the deployment secret.
func NewDigester(deploymentSecret []byte) *Digester {
	return newDigesterFromKey(DeriveKey(deploymentSecret, DigestLabel))
}

// newDigesterFromKey is the digester of a digest key (DeriveKey of the
// deployment secret and DigestLabel, or a verifier credential's).
func newDigesterFromKey(key []byte) *Digester {
	d := &Digester{}
	for i := range 64 {
		var k byte
		if i < len(key) {
			k = key[i]
		}
		d.ipad[i] = k ^ 0x36
		d.opad[i] = k ^ 0x5c
	}
	return d
}

// Digest returns HMAC-SHA-256(key, secret). Secrets longer than MaxSecretLen
// are digested too (they never match a stored digest).
func (d *Digester) Digest(secret string) Digest {
	var buf [64 + 128]byte
	var inner [32]byte
	if len(secret) <= 128 {
		copy(buf[:64], d.ipad[:])
		n := copy(buf[64:], secret)
		inner = sha256.Sum256(buf[:64+n])
	} else {
		h := sha256.New()
		h.Write(d.ipad[:])
		h.Write(stringBytes(secret))
		h.Sum(inner[:0])
	}
	copy(buf[:64], d.opad[:])
	copy(buf[64:], inner[:])
	return sha256.Sum256(buf[:96])
}

// DeriveKey derives a 32-byte purpose-bound key from the deployment secret:
// HMAC-SHA-256(deploymentSecret, label).
func DeriveKey(deploymentSecret []byte, label string) []byte {
	m := hmac.New(sha256.New, deploymentSecret)
	m.Write([]byte(label))
	return m.Sum(nil)
}

func stringBytes(s string) []byte {
	return unsafe.Slice(unsafe.StringData(s), len(s))
}
