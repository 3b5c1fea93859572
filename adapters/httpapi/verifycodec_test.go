package httpapi

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keyd-dev/keyd/adapters/commands"
	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/verifier"
)

var verifyBodies = []string{
	`{"key":"sk_abc"}`,
	`{"key":"sk_abc","permissions":["posts:read","posts:write"]}`,
	` { "permissions" : [ ] , "key" : "" } `,
	`{"key":"sk_abc","permissions":null}`,
	"{\n\t\"key\": \"sk_abc\",\r\n\"permissions\": [\"a\"]\n}\n",
	`{"key":"sk_abc","resource":"project:p_1","permissions":["a"]}`,
	`{"key":"sk_abc","resource":"a","resource":"b"}`,
	`{"key":"sk_abc","resource":null}`,
	`{"key":"sk_abc","key":"sk_abd"}`,
	`{"Key":"sk_abc"}`,
	`{"key":"sk_\u0061bc"}`,
	`{"key":"sk_abc","permissions":["a",]}`,
	`{"key":"sk_abc"}x`,
	`{"key":"sk_abc"}{}`,
	`{"key":null}`,
	`{"key":5}`,
	`{"key":"sk_abc","extra":1}`,
	`{"key":"clé"}`,
	`{}`,
	``,
	`[]`,
	`{"permissions":["a"]}`,
	`{"key":"sk","permissions":["a","b","c","d","e","f","g","h","i","j","k","l","m","n","o","p","q"]}`,
}

// FuzzVerifyRequest: whenever decodeVerifyFast takes a body, commands.Decode
// (what the route would otherwise run) accepts it too, with the same key and
// the same permissions; a body it does not take goes to commands.Decode, so
// the route accepts and refuses exactly what commands.Decode does.
func FuzzVerifyRequest(f *testing.F) {
	for _, b := range verifyBodies {
		f.Add([]byte(b))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var perms [maxFastPerms]string
		key, permissions, resource, ok := decodeVerifyFast(body, &perms)
		if !ok {
			return
		}
		var req verifyRequest
		if err := commands.Decode(body, &req); err != nil {
			t.Fatalf("%q: the fast path took it, commands.Decode refuses it: %v", body, err)
		}
		if req.Key == nil {
			t.Fatalf("%q: the fast path took it, commands.Decode has no key", body)
		}
		if *req.Key != key {
			t.Fatalf("%q: key %q, commands.Decode %q", body, key, *req.Key)
		}
		if !slices.Equal(permissions, req.Permissions) || (permissions == nil) != (req.Permissions == nil) {
			t.Fatalf("%q: permissions %q, commands.Decode %q", body, permissions, req.Permissions)
		}
		if resource != req.Resource {
			t.Fatalf("%q: resource %q, commands.Decode %q", body, resource, req.Resource)
		}
	})
}

// TestVerifyRequestFastPath: the bodies clients send take the fast path;
// the unusual ones do not (and so meet commands.Decode's checks).
func TestVerifyRequestFastPath(t *testing.T) {
	fast := map[string]bool{}
	for _, b := range verifyBodies[:6] {
		fast[b] = true
	}
	for _, b := range verifyBodies {
		var perms [maxFastPerms]string
		_, _, _, ok := decodeVerifyFast([]byte(b), &perms)
		if ok != fast[b] {
			t.Errorf("%q: fast path %v, want %v", b, ok, fast[b])
		}
	}
	big := `{"key":"` + strings.Repeat("a", commands.MaxBytes) + `"}`
	if _, _, _, ok := decodeVerifyFast([]byte(big), new([maxFastPerms]string)); ok {
		t.Error("a body over commands.MaxBytes took the fast path")
	}
}

func sampleResult() verifier.Result {
	exp := time.Date(2031, 2, 3, 4, 5, 6, 789, time.UTC)
	return verifier.Result{Valid: true, Code: verifier.CodeValid, Sequence: 42, Key: verifier.KeyInfo{
		ID: "key_01J0000000000000000000000", OrgID: "org_1", Owner: domain.Owner{Type: "organization", ID: "org_1"},
		Name: "ci <deploy> & \"friends\"", Permissions: []string{"posts:read", "posts:write"}, ExpiresAt: &exp,
		Metadata: map[string]string{"team": "a", "env": "prod\u2028", "zz": "\x00\xff"},
		Roles:    []string{"ops"}, Resources: []string{"project:p_1", "project:p_2"},
	}}
}

// FuzzVerifyReply: appendVerifyReply writes what json.Marshal writes.
func FuzzVerifyReply(f *testing.F) {
	f.Add(true, "valid", "key_1", "org", "organization", "org", "name", "posts:read", "team", "x", int64(1e18), uint64(7), uint8(3))
	f.Add(false, "revoked", "key_<1>", "o&g", "user", "u\u2029", "n\n\t\"\\\x7f", "", "", "", int64(-1), uint64(0), uint8(0))
	f.Add(false, "not_found", "", "", "", "", "", "", "", "", int64(0), uint64(1), uint8(0))
	f.Fuzz(func(t *testing.T, valid bool, code, id, org, ownerType, ownerID, name, perm, mk, mv string, expNs int64, seq uint64, shape uint8) {
		r := verifier.Result{Valid: valid, Code: code, Sequence: seq, Key: verifier.KeyInfo{
			ID: id, OrgID: org, Owner: domain.Owner{Type: ownerType, ID: ownerID}, Name: name,
		}}
		if shape&1 != 0 {
			r.Key.Permissions = []string{perm, perm + "x"}
		} else if shape&2 != 0 {
			r.Key.Permissions = []string{}
		}
		if shape&4 != 0 {
			r.Key.Metadata = map[string]string{mk: mv, mv: mk, "k": name}
		} else if shape&8 != 0 {
			r.Key.Metadata = map[string]string{}
		}
		if shape&64 != 0 {
			r.Key.Roles, r.Key.Resources = []string{perm}, []string{}
		}
		if shape&16 != 0 {
			exp := time.Unix(0, expNs).UTC()
			if shape&32 != 0 {
				exp = exp.AddDate(int(expNs%20000), 0, 0) // years beyond 9999 too
			}
			r.Key.ExpiresAt = &exp
		}
		checkReply(t, r)
	})
}

func checkReply(t *testing.T, r verifier.Result) {
	t.Helper()
	want, wantErr := json.Marshal(r)
	got, ok := appendVerifyReply(nil, &r)
	switch {
	case !ok && wantErr == nil && r.Key.ExpiresAt == nil && len(r.Key.Metadata) <= maxFastMetadata:
		t.Fatalf("%+v: no fast reply", r)
	case ok && wantErr != nil:
		t.Fatalf("%+v: fast reply %s, json.Marshal fails: %v", r, got, wantErr)
	case ok && string(got) != string(want):
		t.Fatalf("%+v:\nfast         %s\njson.Marshal %s", r, got, want)
	}
}

// TestVerifyReply: the replies of each verdict, and a time json.Marshal
// refuses, match json.Marshal.
func TestVerifyReply(t *testing.T) {
	r := sampleResult()
	checkReply(t, r)
	if _, ok := appendVerifyReply(nil, &r); !ok {
		t.Fatal("the sample reply took the slow path")
	}
	checkReply(t, verifier.Result{Code: verifier.CodeMalformed, Sequence: 3})
	r.Key.Permissions, r.Key.Metadata, r.Key.ExpiresAt = nil, nil, nil
	checkReply(t, r)
	far := time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	r.Key.ExpiresAt = &far
	if _, ok := appendVerifyReply(nil, &r); ok {
		t.Fatal("a year json.Marshal refuses took the fast path")
	}
}

// TestVerifyCodecAllocs: decoding a plain request and encoding a reply
// allocate nothing.
func TestVerifyCodecAllocs(t *testing.T) {
	body := []byte(`{"key":"sk_abc","permissions":["posts:read","posts:write"]}`)
	r := sampleResult()
	buf := make([]byte, 0, 1024)
	var perms [maxFastPerms]string
	if a := testing.AllocsPerRun(1000, func() {
		if _, _, _, ok := decodeVerifyFast(body, &perms); !ok {
			t.Fatal("not fast")
		}
	}); a != 0 {
		t.Errorf("decodeVerifyFast: %.1f allocs, want 0", a)
	}
	if a := testing.AllocsPerRun(1000, func() {
		if _, ok := appendVerifyReply(buf[:0], &r); !ok {
			t.Fatal("not fast")
		}
	}); a != 0 {
		t.Errorf("appendVerifyReply: %.1f allocs, want 0", a)
	}
}
