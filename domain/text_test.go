package domain_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/keyd-dev/keyd/domain"
)

// controls are the characters CheckText refuses in every field: a sample of
// C0 (NUL, ESC, carriage return, ...), DEL, C1, and every bidirectional
// embedding, override and isolate (finding I2).
var controls = []rune{
	0x00, 0x01, 0x07, 0x08, 0x0b, 0x0c, 0x0d, 0x1b, 0x1f, 0x7f, 0x80, 0x85, 0x9b, 0x9f,
	0x202a, 0x202b, 0x202c, 0x202d, 0x202e, 0x2066, 0x2067, 0x2068, 0x2069,
}

func TestCheckText(t *testing.T) {
	t.Parallel()
	for _, multiline := range []bool{false, true} {
		for _, r := range controls {
			for _, s := range []string{string(r), "a" + string(r), string(r) + "b", "é" + string(r) + "é"} {
				err := domain.CheckText("the field", s, multiline)
				wantErr(t, err, domain.EInvalid, "the field", fmt.Sprintf("U+%04X", r), fmt.Sprintf("at byte %d", strings.IndexRune(s, r)))
			}
		}
		for _, s := range []string{"\xff", "a\xc3", "\xed\xa0\x80" /* a UTF-16 surrogate */, "\xc0\x80" /* overlong NUL */} {
			wantErr(t, domain.CheckText("the field", s, multiline), domain.EInvalid, "the field", "UTF-8")
		}
		for _, s := range []string{
			"", "plain ASCII ~!@#$%^&*()", "é漢字🔑", "\u00a0no-break space", "\u200ezero width LRM is not a bidi control the contract lists",
			"\ufeffBOM", "\u2028line separator", "\U0010FFFF", "a\u00a0\u00ad",
		} {
			if err := domain.CheckText("f", s, multiline); err != nil {
				t.Errorf("CheckText(%q, %v) = %v, want nil", s, multiline, err)
			}
		}
	}
	for _, s := range []string{"a\tb", "line 1\nline 2\n", "\t\n"} {
		if err := domain.CheckText("description", s, true); err != nil {
			t.Errorf("multiline CheckText(%q) = %v, want nil", s, err)
		}
		wantErr(t, domain.CheckText("name", s, false), domain.EInvalid, "name", "tab and line feed included")
	}
	wantErr(t, domain.CheckText("reason", "a\r\nb", true), domain.EInvalid, "reason", "U+000D")
}

// TestTextRuleInEveryCheck: each field check of the domain applies CheckText,
// naming its field; free text (descriptions, reasons) keeps tab and line
// feed.
func TestTextRuleInEveryCheck(t *testing.T) {
	t.Parallel()
	for _, r := range controls {
		c := string(r)
		wantErr(t, domain.CheckName("a"+c), domain.EInvalid, "name")
		wantErr(t, domain.CheckMetadata(map[string]string{"k" + c: "v"}), domain.EInvalid, "metadata key")
		wantErr(t, domain.CheckMetadata(map[string]string{"k": c}), domain.EInvalid, `metadata value of "k"`)
		wantErr(t, domain.CheckActor(&domain.Actor{Type: "user", ID: "u" + c}), domain.EInvalid, "actor.id")
		wantErr(t, domain.CheckActor(&domain.Actor{Type: "user" + c, ID: "u"}), domain.EInvalid, "actor.type")
		_, _, _, err := domain.Catalog{}.Define("a:b", "d"+c)
		wantErr(t, err, domain.EInvalid, "description")
	}
	for _, s := range []string{"a\tb", "a\nb"} {
		wantErr(t, domain.CheckName(s), domain.EInvalid, "name")
		wantErr(t, domain.CheckMetadata(map[string]string{"k": s}), domain.EInvalid, "metadata value")
		if _, _, _, err := (domain.Catalog{}).Define("a:b", "line one"+s); err != nil {
			t.Errorf("Define with description %q: %v", s, err)
		}
	}
}

// TestServiceRefusesControlText: the commands refuse control and bidi
// characters in every string they carry (reason, idempotency key, command
// id, actor, and the fields above), naming the field, and append nothing;
// a reason keeps tab and line feed.
func TestServiceRefusesControlText(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	k := e.create("org", domain.CreateKey{})
	before := e.lastSeq()
	for _, c := range []string{"\x00", "\x1b[31m", "\r", "\u202e", "\u0085"} {
		_, err := e.svc.CreateKey(e.ctx, "org", domain.CreateKey{Name: "n" + c})
		wantErr(t, err, domain.EInvalid, "name")
		_, err = e.svc.CreateKey(e.ctx, "org", domain.CreateKey{Name: "n", Metadata: map[string]string{"k": c}})
		wantErr(t, err, domain.EInvalid, "metadata value")
		_, err = e.svc.CreateKey(e.ctx, "org", domain.CreateKey{Name: "n", Metadata: map[string]string{c: "v"}})
		wantErr(t, err, domain.EInvalid, "metadata key")
		_, err = e.svc.CreateKey(e.ctx, "org", domain.CreateKey{Name: "n", IdempotencyKey: "i" + c})
		wantErr(t, err, domain.EInvalid, "idempotency_key")
		_, err = e.svc.CreateKey(e.ctx, "org", domain.CreateKey{Name: "n", Meta: domain.Meta{Actor: &domain.Actor{Type: "user", ID: c}}})
		wantErr(t, err, domain.EInvalid, "actor.id")
		_, err = e.svc.RevokeKey(e.ctx, "org", domain.RevokeKey{KeyID: k.Key.ID, Reason: "r" + c})
		wantErr(t, err, domain.EInvalid, "reason")
		_, err = e.svc.UpdateKey(e.ctx, "org", domain.UpdateKey{KeyID: k.Key.ID, Name: ptr(c)})
		wantErr(t, err, domain.EInvalid, "name")
		_, err = e.svc.RotateKey(e.ctx, "org", domain.RotateKey{KeyID: k.Key.ID, GracePeriodSeconds: ptr(int64(0)), Meta: domain.Meta{CommandID: "id" + c}})
		wantErr(t, err, domain.EInvalid, "Keyd-Command-Id")
		_, err = e.svc.DefinePermission(e.ctx, domain.DefinePermission{Slug: "a:b", Description: c})
		wantErr(t, err, domain.EInvalid, "description")
	}
	if got := e.lastSeq(); got != before {
		t.Fatalf("refused commands appended: last sequence %d, was %d", got, before)
	}
	res, err := e.svc.RevokeKey(e.ctx, "org", domain.RevokeKey{KeyID: k.Key.ID, Reason: "leaked:\n\tin CI logs"})
	if err != nil {
		t.Fatal(err)
	}
	if got := e.load("org", res.Key.ID).RevokeReason; got != "leaked:\n\tin CI logs" {
		t.Fatalf("revoke reason %q", got)
	}
}
