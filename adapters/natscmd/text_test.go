package natscmd

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/keyd-dev/keyd/adapters/commands"
	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/internal/testenv"
	"github.com/keyd-dev/keyd/internal/testworld"
)

// TestH1ControlTextRefusedOverNATS (finding H1, vector nats_name and the
// others as NATS carries them): a command over NATS with U+0000 (or another
// control or bidi character) in any string field is invalid_argument naming
// the field, and the real event stream is left as it was. Duplicate and
// case-folded member names (I3) are refused the same way.
func TestH1ControlTextRefusedOverNATS(t *testing.T) {
	t.Parallel()
	e := testworld.EventStream(t)
	svc := e.Service([]byte("natscmd text test secret"))
	r := &Responder{Conn: e.Conn, Runner: &commands.Runner{Service: svc}, Log: testenv.Logger(t)}
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Stop(t.Context()) })
	request := func(subject string, body any, hdr ...string) (domain.ErrorBody, []byte) {
		t.Helper()
		data, ok := body.(string)
		if !ok {
			b, err := json.Marshal(body)
			if err != nil {
				t.Fatal(err)
			}
			data = string(b)
		}
		m := nats.NewMsg(subject)
		m.Data = []byte(data)
		for i := 0; i+1 < len(hdr); i += 2 {
			m.Header.Set(hdr[i], hdr[i+1])
		}
		reply, err := e.Conn.RequestMsg(m, 10*time.Second)
		if err != nil {
			t.Fatalf("request %s: %v", subject, err)
		}
		var eb domain.ErrorBody
		_ = json.Unmarshal(reply.Data, &eb)
		return eb, reply.Data
	}
	var created domain.CreateKeyResult
	if eb, data := request("keyd.cmd.keys.orgA.create", map[string]any{"name": "victim"}); eb.Error.Code != "" {
		t.Fatalf("create: %s", data)
	} else if err := json.Unmarshal(data, &created); err != nil {
		t.Fatal(err)
	}
	before := e.LastSeq(t)
	for _, c := range []string{"\x00", "\x07", "\r", "\n", "\u009b", "\u202d", "\u2068"} {
		for _, v := range []struct {
			name, subject string
			body          any
			field         string
		}{
			{"nats_name", "keyd.cmd.keys.orgA.create", map[string]any{"name": "poison" + c}, "name"},
			{"metadata_value", "keyd.cmd.keys.orgA.create", map[string]any{"name": "n", "metadata": map[string]string{"k": c}}, "metadata value"},
			{"metadata_key", "keyd.cmd.keys.orgA.create", map[string]any{"name": "n", "metadata": map[string]string{c: "v"}}, "metadata key"},
			{"idempotency_key", "keyd.cmd.keys.orgA.create", map[string]any{"name": "n", "idempotency_key": c}, "idempotency_key"},
			{"actor", "keyd.cmd.keys.orgA.create", map[string]any{"name": "n", "actor": map[string]string{"type": "service", "id": "svc" + c}}, "actor.id"},
			{"update name", "keyd.cmd.keys.orgA.update", map[string]any{"key_id": created.Key.ID, "name": c}, "name"},
			{"perm_description", "keyd.cmd.permissions.define", map[string]any{"slug": "a:b", "description": "d" + c}, "description"},
		} {
			if c == "\n" && v.field == "description" {
				continue // free text: tab and line feed are allowed
			}
			eb, data := request(v.subject, v.body)
			if eb.Error.Code != domain.EInvalid || !strings.Contains(eb.Error.Message, v.field) {
				t.Errorf("%s with %q: reply %s, want invalid_argument naming %s", v.name, c, data, v.field)
			}
		}
		if c != "\n" && c != "\r" && c != "\x00" { // NATS headers cannot carry those
			eb, data := request("keyd.cmd.keys.orgA.create", map[string]any{"name": "n"}, commands.CommandIDHeader, "id"+c)
			if eb.Error.Code != domain.EInvalid || !strings.Contains(eb.Error.Message, "Keyd-Command-Id") {
				t.Errorf("command id with %q: reply %s", c, data)
			}
		}
	}
	// A revoke reason keeps line feed but not carriage return.
	if eb, data := request("keyd.cmd.keys.orgA.revoke", map[string]any{"key_id": created.Key.ID, "reason": "a\r\nb"}); eb.Error.Code != domain.EInvalid || !strings.Contains(eb.Error.Message, "reason") {
		t.Errorf("revoke with CR: %s", data)
	}
	for _, body := range []string{`{"name":"a","name":"b"}`, `{"Name":"a"}`, `{"name":"a","metadata":{"k":"1","k":"2"}}`} {
		if eb, data := request("keyd.cmd.keys.orgA.create", body); eb.Error.Code != domain.EInvalid {
			t.Errorf("create %s: %s, want invalid_argument", body, data)
		}
	}
	if got := e.LastSeq(t); got != before {
		t.Fatalf("refused commands appended: last sequence %d, was %d", got, before)
	}
	if eb, data := request("keyd.cmd.keys.orgA.revoke", map[string]any{"key_id": created.Key.ID, "reason": "leaked\n\tin CI"}); eb.Error.Code != "" {
		t.Fatalf("revoke with a multi-line reason: %s", data)
	}
}
