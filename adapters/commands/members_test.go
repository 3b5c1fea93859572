package commands_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/keyd-dev/keyd/adapters/commands"
	"github.com/keyd-dev/keyd/domain"
)

// TestDecodeRefusesAmbiguousMembers (finding I3): a member name repeated in
// one object, or one that matches a field only when case is ignored, is
// invalid_argument naming the member, at any depth; encoding/json alone
// takes each of these bodies (checked first, so the test fails if that ever
// changes and the case is no longer one Decode must catch).
func TestDecodeRefusesAmbiguousMembers(t *testing.T) {
	t.Parallel()
	// session mirrors the session request body (httpapi's is unexported).
	type session struct {
		OrgID  string `json:"org_id"`
		UserID string `json:"user_id"`
	}
	tests := []struct {
		name    string
		payload string
		into    func() any
		mention []string
	}{
		{"duplicate", `{"name":"a","name":"b"}`, create, []string{`"name"`, "more than once"}},
		{"duplicate after unescaping", `{"name":"a","n\u0061me":"b"}`, create, []string{`"name"`, "more than once"}},
		{"duplicate unknown member", `{"colour":1,"colour":2}`, create, []string{`"colour"`, "more than once"}},
		{"duplicate in metadata", `{"metadata":{"team":"a","team":"b"}}`, create, []string{`"team"`, `"metadata"`}},
		{"duplicate in actor", `{"actor":{"type":"user","id":"a","id":"b"}}`, create, []string{`"id"`, `"actor"`}},
		{"upper case", `{"NAME":"x"}`, create, []string{`"NAME"`, `"name"`, "case-sensitive"}},
		{"title case", `{"Name":"x"}`, create, []string{`"Name"`, `"name"`}},
		{"embedded field", `{"Actor":{"type":"user","id":"u"}}`, create, []string{`"Actor"`, `"actor"`}},
		{"nested", `{"actor":{"TYPE":"user","id":"u"}}`, create, []string{`"TYPE"`, `"actor"`}},
		{"Unicode folding", `{"ſlug":"a:b"}`, func() any { return &domain.DefinePermission{} }, []string{"ſlug", `"slug"`}},
		{"folded and exact", `{"key_id":"k","KEY_ID":"j"}`, func() any { return &domain.RevokeKey{} }, []string{`"KEY_ID"`}},
		{"session body", `{"org_id":"o","User_Id":"u"}`, func() any { return &session{} }, []string{`"User_Id"`, `"user_id"`}},
		{"session duplicate", `{"org_id":"o","user_id":"u","user_id":"v"}`, func() any { return &session{} }, []string{`"user_id"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := json.Unmarshal([]byte(tt.payload), tt.into()); err != nil && !strings.Contains(err.Error(), "unknown field") {
				t.Fatalf("encoding/json itself refuses %s (%v): not a case for the member check", tt.payload, err)
			}
			err := commands.Decode([]byte(tt.payload), tt.into())
			if domain.ErrorCode(err) != domain.EInvalid {
				t.Fatalf("Decode(%s) = %v, want invalid_argument", tt.payload, err)
			}
			for _, m := range tt.mention {
				if !strings.Contains(domain.ErrorMessage(err), m) {
					t.Errorf("message %q does not mention %s", domain.ErrorMessage(err), m)
				}
			}
		})
	}
}

func create() any { return &domain.CreateKey{} }

// TestDecodeKeepsDistinctMembers: what is not ambiguous still decodes:
// metadata keys differing in case (a map compares exactly), the same name in
// different objects, and bodies whose other problems keep their own
// messages.
func TestDecodeKeepsDistinctMembers(t *testing.T) {
	t.Parallel()
	var c domain.CreateKey
	err := commands.Decode([]byte(`{"name":"n","metadata":{"name":"a","Name":"b","NAME":"c"},"actor":{"type":"user","id":"name"}}`), &c)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Metadata) != 3 || c.Metadata["Name"] != "b" || c.Actor.ID != "name" {
		t.Fatalf("decoded %+v", c)
	}
	for payload, want := range map[string]string{
		`{"name":}`:                       "not valid JSON",
		`{"name":"a","colour":"red"}`:     `unknown field "colour"`,
		`{"name":5,"metadata":{"a":1}}`:   `field "name" must be a string`,
		`{"name":"a"} {"name":"a"}`:       "one JSON object",
		`{"name":"a","name":"b"`:          "more than once", // the duplicate comes before the end
		`{"expected_version":1e400}`:      "unknown field",  // numbers are the decoder's business
		strings.Repeat(`{"a":`, 12000):    "max depth",
		`{"metadata":{"a":"b"},"x":[[]]}`: `unknown field "x"`,
	} {
		err := commands.Decode([]byte(payload), &domain.CreateKey{})
		if domain.ErrorCode(err) != domain.EInvalid || !strings.Contains(domain.ErrorMessage(err), want) {
			t.Errorf("Decode(%.40s) = %v, want invalid_argument mentioning %q", payload, err, want)
		}
	}
}
