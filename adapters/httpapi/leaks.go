package httpapi

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

	"github.com/keyd-dev/keyd/adapters/commands"
	"github.com/keyd-dev/keyd/domain"
)

// Leak reports: POST /v1/leaks takes GitHub's secret-scanning partner
// payload, [{"token", "type", "url", "source"}], authenticated by the admin
// token or by GitHub's signature (Github-Public-Key-Identifier and
// Github-Public-Key-Signature: base64 ECDSA P-256 SHA-256 over the raw body)
// against LeakKeys. For each token that is a keyd key the domain appends
// key.leaked, then the organization's leak_action (domain.ReportLeak); the
// reply labels each token true_positive (a keyd key) or false_positive, and
// is sent once those events are appended. Tokens are never logged.

// Limits of a leak report.
const (
	MaxLeakBodyBytes = 1 << 20
	MaxLeakEntries   = 1000
	// Header names of GitHub's signature.
	LeakKeyIDHeader     = "Github-Public-Key-Identifier"
	LeakSignatureHeader = "Github-Public-Key-Signature"
)

// LeakKeys are the public keys leak reports may be signed with, by key
// identifier.
type LeakKeys struct {
	keys map[string]*ecdsa.PublicKey
}

// leakKeysFile is GitHub's key list format
// (https://api.github.com/meta/public_keys/secret_scanning).
type leakKeysFile struct {
	PublicKeys []struct {
		KeyIdentifier string `json:"key_identifier"`
		Key           string `json:"key"`
		IsCurrent     bool   `json:"is_current"`
	} `json:"public_keys"`
}

// LoadLeakKeys reads a key list file in GitHub's format: {"public_keys":
// [{"key_identifier", "key" (PEM, ECDSA P-256), "is_current"}]}. Every key
// listed is accepted, current or not (GitHub signs with older ones while it
// rotates).
func LoadLeakKeys(path string) (*LeakKeys, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("leak signing keys: %w", err)
	}
	return ParseLeakKeys(b)
}

// ParseLeakKeys parses a key list in GitHub's format (LoadLeakKeys).
func ParseLeakKeys(b []byte) (*LeakKeys, error) {
	var f leakKeysFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("leak signing keys: not GitHub's {\"public_keys\": [...]} JSON: %w", err)
	}
	lk := &LeakKeys{keys: map[string]*ecdsa.PublicKey{}}
	for i, k := range f.PublicKeys {
		blk, _ := pem.Decode([]byte(k.Key))
		if blk == nil {
			return nil, fmt.Errorf("leak signing keys: key %d (%q) is not PEM", i, k.KeyIdentifier)
		}
		pub, err := x509.ParsePKIXPublicKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("leak signing keys: key %d (%q): %w", i, k.KeyIdentifier, err)
		}
		ec, ok := pub.(*ecdsa.PublicKey)
		if !ok || ec.Curve.Params().Name != "P-256" {
			return nil, fmt.Errorf("leak signing keys: key %d (%q) is not an ECDSA P-256 key", i, k.KeyIdentifier)
		}
		lk.keys[k.KeyIdentifier] = ec
	}
	return lk, nil
}

// verify checks sig (base64 ASN.1 ECDSA) over body by the key id names.
func (lk *LeakKeys) verify(id, sig string, body []byte) bool {
	if lk == nil {
		return false
	}
	pub, ok := lk.keys[id]
	if !ok {
		return false
	}
	raw, err := base64.StdEncoding.DecodeString(sig)
	if err != nil {
		return false
	}
	h := sha256.Sum256(body)
	return ecdsa.VerifyASN1(pub, h[:], raw)
}

type leakEntry struct {
	Token  string `json:"token"`
	Type   string `json:"type"`
	URL    string `json:"url"`
	Source string `json:"source"`
}

type leakLabel struct {
	TokenRaw  string `json:"token_raw"`
	TokenType string `json:"token_type"`
	Label     string `json:"label"`
}

// leaks answers POST /v1/leaks.
func (s *Server) leaks(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength > MaxLeakBodyBytes {
		s.writeError(w, r, domain.Errorf(domain.ETooLarge, "a leak report is at most %d bytes", MaxLeakBodyBytes))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxLeakBodyBytes))
	if err != nil {
		s.writeError(w, r, bodyError(err))
		return
	}
	if err := s.leakAuth(r, body); err != nil {
		s.writeError(w, r, err)
		return
	}
	var entries []leakEntry
	if err := commands.CheckMembers(body, &entries); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := json.Unmarshal(body, &entries); err != nil {
		s.writeError(w, r, domain.Errorf(domain.EInvalid, `a leak report is a JSON array of {"token", "type", "url", "source"}`))
		return
	}
	if len(entries) > MaxLeakEntries {
		s.writeError(w, r, domain.Errorf(domain.ETooLarge, "a leak report holds at most %d entries, got %d", MaxLeakEntries, len(entries)))
		return
	}
	if err := checkLeakText(entries); err != nil {
		s.writeError(w, r, err)
		return
	}
	if s.Verifier == nil {
		s.writeError(w, r, domain.Errorf(domain.EUnavailable, "this process has no verifier"))
		return
	}
	out := make([]leakLabel, 0, len(entries))
	for _, e := range entries {
		l := leakLabel{TokenRaw: e.Token, TokenType: e.Type, Label: "false_positive"}
		key, ok, err := s.Verifier.Find(e.Token)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		if ok {
			if _, err := s.Runner.Service.ReportLeak(r.Context(), key.OrgID, key.ID, e.URL, e.Source); err != nil {
				s.writeError(w, r, err)
				return
			}
			l.Label = "true_positive"
		}
		out = append(out, l)
	}
	writeJSON(w, http.StatusOK, out)
}

// checkLeakText applies domain.CheckText to the text of every entry (type,
// url, source; single-line). The token is not checked: a presented key
// with control characters is simply not a keyd key (false_positive), as it
// is malformed at verification.
func checkLeakText(entries []leakEntry) error {
	for i, e := range entries {
		for _, f := range []struct{ name, v string }{{"type", e.Type}, {"url", e.URL}, {"source", e.Source}} {
			if err := domain.CheckText(fmt.Sprintf("[%d].%s", i, f.name), f.v, false); err != nil {
				return err
			}
		}
	}
	return nil
}

// leakAuth accepts the admin token or a valid GitHub signature.
// Errors: unauthenticated.
func (s *Server) leakAuth(r *http.Request, body []byte) error {
	if h := r.Header.Get("Authorization"); h != "" && s.AdminToken != "" {
		scheme, token, _ := strings.Cut(h, " ")
		got, want := sha256.Sum256([]byte(strings.TrimSpace(token))), sha256.Sum256([]byte(s.AdminToken))
		if strings.EqualFold(scheme, "Bearer") && subtle.ConstantTimeCompare(got[:], want[:]) == 1 {
			return nil
		}
		return domain.Errorf(domain.EUnauthorized, "the bearer token is not valid")
	}
	id, sig := r.Header.Get(LeakKeyIDHeader), r.Header.Get(LeakSignatureHeader)
	if id == "" || sig == "" {
		return domain.Errorf(domain.EUnauthorized, "a leak report needs the admin token, or GitHub's %s and %s headers", LeakKeyIDHeader, LeakSignatureHeader)
	}
	if !s.LeakKeys.verify(id, sig, body) {
		return domain.Errorf(domain.EUnauthorized, "the leak report's signature does not verify against key %q of --leak-signing-keys", id)
	}
	return nil
}
