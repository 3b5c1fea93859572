package httpapi

import (
	"strconv"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/keyd-dev/keyd/adapters/commands"
	"github.com/keyd-dev/keyd/verifier"
)

// The verify route's hand-written codec: the route is keyd's hottest, and
// encoding/json's strict decoding (commands.Decode) and reflection-based
// encoding were two thirds of its CPU. Both halves are exact shortcuts, not
// second implementations of the contract:
//
//   - decodeVerifyFast accepts only the plain shape of a verify request
//     (one object with "key" and, optionally, "permissions" and
//     "resource", each at most once, strings of printable ASCII without escapes) and otherwise says
//     it does not know, and the route falls back to commands.Decode; so
//     every body is accepted or refused, and with the same values and error
//     messages, as commands.Decode alone would.
//   - appendVerifyReply writes the bytes json.Marshal writes for a
//     verifier.Result, or says it cannot (a time json.Marshal refuses, more
//     metadata than it sorts on the stack) and the route uses json.Marshal.
//
// FuzzVerifyRequest and FuzzVerifyReply hold both to encoding/json.

// maxFastPerms is the most permissions decodeVerifyFast takes (more: the
// slow path).
const maxFastPerms = 16

// decodeVerifyFast decodes body if it is a plain verify request: optional
// JSON whitespace, an object whose members are "key" (a string) and
// optionally "permissions" (an array of strings, or null) and "resource" (a
// string), in any order, each once, then optional whitespace and nothing else; every string made of
// printable ASCII other than '"' and '\\' (so no escapes); at most
// commands.MaxBytes long. It returns the key, the permissions (in perms'
// storage; nil for null or absent), the resource ("" when absent) and ok; for any other body ok is false
// and the caller must decode body with commands.Decode. It does not
// allocate: key, the permissions and the resource alias body, so they are
// valid only while body is.
func decodeVerifyFast(body []byte, perms *[maxFastPerms]string) (key string, permissions []string, resource string, ok bool) {
	if len(body) > commands.MaxBytes {
		return "", nil, "", false // too_large, said by commands.Decode
	}
	i := skipWS(body, 0)
	if i >= len(body) || body[i] != '{' {
		return "", nil, "", false
	}
	i = skipWS(body, i+1)
	haveKey, havePerms, haveResource := false, false, false
	for {
		name, j, ok := fastString(body, i)
		if !ok {
			return "", nil, "", false
		}
		j = skipWS(body, j)
		if j >= len(body) || body[j] != ':' {
			return "", nil, "", false
		}
		j = skipWS(body, j+1)
		switch name {
		case "key":
			if haveKey {
				return "", nil, "", false
			}
			haveKey = true
			if key, j, ok = fastString(body, j); !ok {
				return "", nil, "", false
			}
		case "permissions":
			if havePerms {
				return "", nil, "", false
			}
			havePerms = true
			if permissions, j, ok = fastStrings(body, j, perms); !ok {
				return "", nil, "", false
			}
		case "resource":
			if haveResource {
				return "", nil, "", false
			}
			haveResource = true
			if resource, j, ok = fastString(body, j); !ok {
				return "", nil, "", false
			}
		default:
			return "", nil, "", false
		}
		j = skipWS(body, j)
		if j >= len(body) {
			return "", nil, "", false
		}
		if body[j] == '}' {
			i = j + 1
			break
		}
		if body[j] != ',' {
			return "", nil, "", false
		}
		i = skipWS(body, j+1)
	}
	if !haveKey || skipWS(body, i) != len(body) {
		return "", nil, "", false
	}
	return key, permissions, resource, true
}

// skipWS returns the index of the first byte at or after i that is not
// JSON whitespace.
func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\r' || b[i] == '\t') {
		i++
	}
	return i
}

// fastString reads a string at b[i] made only of plainByte bytes; it
// returns its contents (aliasing b) and the index after it.
func fastString(b []byte, i int) (string, int, bool) {
	if i >= len(b) || b[i] != '"' {
		return "", 0, false
	}
	start := i + 1
	for j := start; j < len(b); j++ {
		c := b[j]
		if c == '"' {
			if j == start {
				return "", j + 1, true
			}
			return unsafe.String(&b[start], j-start), j + 1, true
		}
		if c < 0x20 || c > 0x7e || c == '\\' {
			return "", 0, false
		}
	}
	return "", 0, false
}

// fastStrings reads null or an array of fastString strings at b[i], into
// perms.
func fastStrings(b []byte, i int, perms *[maxFastPerms]string) ([]string, int, bool) {
	if i+4 <= len(b) && string(b[i:i+4]) == "null" {
		return nil, i + 4, true
	}
	if i >= len(b) || b[i] != '[' {
		return nil, 0, false
	}
	i = skipWS(b, i+1)
	n := 0
	if i < len(b) && b[i] == ']' {
		return perms[:0], i + 1, true
	}
	for {
		if n == len(perms) {
			return nil, 0, false
		}
		s, j, ok := fastString(b, i)
		if !ok {
			return nil, 0, false
		}
		perms[n] = s
		n++
		j = skipWS(b, j)
		if j >= len(b) {
			return nil, 0, false
		}
		if b[j] == ']' {
			return perms[:n], j + 1, true
		}
		if b[j] != ',' {
			return nil, 0, false
		}
		i = skipWS(b, j+1)
	}
}

// maxFastMetadata is the most metadata entries appendVerifyReply sorts
// (more: json.Marshal).
const maxFastMetadata = 16

// appendVerifyReply appends to dst what json.Marshal(r) returns, and true;
// or false when it cannot (an expiry not in UTC or one json.Marshal
// refuses, more than maxFastMetadata metadata entries), and the caller must use json.Marshal.
// It does not allocate when dst has room.
func appendVerifyReply(dst []byte, r *verifier.Result) ([]byte, bool) {
	dst = append(dst, `{"valid":`...)
	dst = strconv.AppendBool(dst, r.Valid)
	dst = append(dst, `,"code":`...)
	dst = appendJSONString(dst, r.Code)
	if !r.Key.IsZero() {
		k := &r.Key
		dst = append(dst, `,"key":{"id":`...)
		dst = appendJSONString(dst, k.ID)
		dst = append(dst, `,"org_id":`...)
		dst = appendJSONString(dst, k.OrgID)
		dst = append(dst, `,"owner":{"type":`...)
		dst = appendJSONString(dst, k.Owner.Type)
		dst = append(dst, `,"id":`...)
		dst = appendJSONString(dst, k.Owner.ID)
		dst = append(dst, `},"name":`...)
		dst = appendJSONString(dst, k.Name)
		dst = append(dst, `,"permissions":`...)
		dst = appendStrings(dst, k.Permissions)
		dst = append(dst, `,"expires_at":`...)
		if k.ExpiresAt == nil {
			dst = append(dst, "null"...)
		} else {
			// time.Time.MarshalJSON: RFC 3339 with nanoseconds (an error
			// for years it cannot write that way). The verifier's times
			// are UTC; others take the slow path.
			if y := k.ExpiresAt.Year(); y < 0 || y > 9999 || k.ExpiresAt.Location() != time.UTC {
				return dst, false
			}
			dst = append(dst, '"')
			dst = k.ExpiresAt.AppendFormat(dst, time.RFC3339Nano)
			dst = append(dst, '"')
		}
		dst = append(dst, `,"metadata":`...)
		var ok bool
		if dst, ok = appendStringMap(dst, k.Metadata); !ok {
			return dst, false
		}
		dst = append(dst, `,"roles":`...)
		dst = appendStrings(dst, k.Roles)
		dst = append(dst, `,"resources":`...)
		dst = appendStrings(dst, k.Resources)
		dst = append(dst, '}')
	}
	dst = append(dst, `,"sequence":`...)
	dst = strconv.AppendUint(dst, r.Sequence, 10)
	dst = append(dst, '}')
	return dst, true
}

// appendStrings appends ss as json.Marshal does (null for nil).
func appendStrings(dst []byte, ss []string) []byte {
	if ss == nil {
		return append(dst, "null"...)
	}
	dst = append(dst, '[')
	for i, p := range ss {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendJSONString(dst, p)
	}
	return append(dst, ']')
}

// appendStringMap appends m as json.Marshal does (null for nil, keys
// sorted), or returns false for more than maxFastMetadata entries.
func appendStringMap(dst []byte, m map[string]string) ([]byte, bool) {
	if m == nil {
		return append(dst, "null"...), true
	}
	if len(m) > maxFastMetadata {
		return dst, false
	}
	var keys [maxFastMetadata]string
	n := 0
	for k := range m {
		// Insertion sort: a handful of entries.
		j := n
		for j > 0 && keys[j-1] > k {
			keys[j] = keys[j-1]
			j--
		}
		keys[j] = k
		n++
	}
	dst = append(dst, '{')
	for i, k := range keys[:n] {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendJSONString(dst, k)
		dst = append(dst, ':')
		dst = appendJSONString(dst, m[k])
	}
	return append(dst, '}'), true
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string the way encoding/json does
// (HTML-escaped: <, > and & as \u00XX; U+2028 and U+2029 escaped; invalid
// UTF-8 as \ufffd).
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
