package verifier_test

import (
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/keyd-dev/keyd/adapters/httpapi"
	"github.com/keyd-dev/keyd/domain"
)

// TestCredentialCannotSignSessions (M1): the verifier credential holds the
// digest key and the public event key only. Nothing in it signs a widget
// session keyd accepts: neither the credential, its decoded bytes, nor any
// part of it, used as the session key or as the secret keyd derives the
// session key from.
func TestCredentialCannotSignSessions(t *testing.T) {
	t.Parallel()
	secret := []byte("a deployment secret of at least thirty-two bytes")
	keyd := httpapi.NewSessions(domain.DeriveKey(secret, httpapi.SessionKeyLabel), time.Now)
	genuine, _, err := keyd.Issue("org_2", "alice", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := keyd.Verify(genuine); err != nil {
		t.Fatalf("keyd's own session: %v", err)
	}

	cred := domain.NewVerifierCredential(secret).String()
	if !strings.HasPrefix(cred, domain.VerifierCredentialPrefix) || strings.Contains(cred, string(secret)) {
		t.Fatalf("credential %q", cred)
	}
	raw, err := base64.RawURLEncoding.DecodeString(cred[len(domain.VerifierCredentialPrefix):])
	if err != nil || len(raw) != 1+32+32+4 {
		t.Fatalf("credential bytes: %d, %v", len(raw), err)
	}
	c, err := domain.ParseVerifierCredential(cred)
	if err != nil {
		t.Fatal(err)
	}
	material := map[string][]byte{
		"credential": []byte(cred), "raw": raw, "digest key": raw[1:33], "event key": raw[33:65],
		"event key (parsed)": c.EventKey().Bytes(),
	}
	for name, m := range material {
		for how, key := range map[string][]byte{"as the key": m, "as the secret": domain.DeriveKey(m, httpapi.SessionKeyLabel)} {
			tok, _, err := httpapi.NewSessions(key, time.Now).Issue("org_2", "mallory", time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := keyd.Verify(tok); err == nil {
				t.Errorf("a session signed with the %s %s is accepted", name, how)
			}
		}
	}
	// The credential's digester computes keyd's digests.
	if c.Digester().Digest("sk_x") != domain.NewDigester(secret).Digest("sk_x") {
		t.Error("the credential's digests differ from keyd's")
	}
	// Tampering is caught by the checksum; a secret is not a credential.
	bad := []byte(cred)
	bad[10] ^= 1
	for _, s := range []string{string(bad), cred[:len(cred)-2], string(secret), ""} {
		if _, err := domain.ParseVerifierCredential(s); err == nil {
			t.Errorf("ParseVerifierCredential(%.12q…) = nil error", s)
		}
	}
}
