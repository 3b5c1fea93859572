package testworld

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/domain"
)

// What an attacker who may publish on keyd.events.> does (finding H2), for
// the tests of authentic events.

// Unrevoked returns the payload of a forged key.updated event that takes
// the key whose last event (the one at the end of its subject in e's stream)
// is last back to active, one version up, with perm added to its
// permissions and its name changed: what the review's reproduction sent.
func Unrevoked(t testing.TB, last []byte, perm string) []byte {
	t.Helper()
	ev, err := domain.DecodeEvent(last)
	if err != nil {
		t.Fatalf("testworld: the last event: %v", err)
	}
	k, err := ev.KeyState()
	if err != nil {
		t.Fatalf("testworld: the last event: %v", err)
	}
	k.Status, k.RevokedAt, k.RevokeReason = domain.StatusActive, nil, ""
	k.Version++
	k.Permissions = append(k.Permissions, perm)
	name := "forged by an unauthenticated NATS client"
	k.Name = name
	data, err := json.Marshal(domain.KeyUpdatedData{Name: &name, Key: k})
	if err != nil {
		t.Fatal(err)
	}
	out, err := json.Marshal(domain.Event{ID: "evt_forged", Type: domain.EventKeyUpdated, OrgID: k.OrgID, KeyID: k.ID,
		OccurredAt: time.Now().UTC(), Actor: domain.Actor{Type: "user", ID: "mallory"}, Data: data})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// LastRaw returns the last message on subject as stored (payload and
// headers, the signature included).
func (e *Events) LastRaw(t testing.TB, subject string) *jetstream.RawStreamMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	m, err := e.Stream.GetLastMsgForSubject(ctx, subject)
	if err != nil {
		t.Fatalf("testworld: last message on %s: %v", subject, err)
	}
	return m
}

// Raw returns the message at seq as stored.
func (e *Events) Raw(t testing.TB, seq uint64) *jetstream.RawStreamMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	m, err := e.Stream.GetMsg(ctx, seq)
	if err != nil {
		t.Fatalf("testworld: message %d: %v", seq, err)
	}
	return m
}

// Publish stores data on subject as any NATS client with publish rights on
// keyd.events.> can: with the signature header sig ("": none), no guard.
// It returns the stream sequence.
func (e *Events) Publish(t testing.TB, subject string, data []byte, sig string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	m := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{"Keyd-Event-Type": {domain.EventKeyUpdated}}}
	if sig != "" {
		m.Header.Set(domain.SignatureHeader, sig)
	}
	ack, err := e.JS.PublishMsg(ctx, m)
	if err != nil {
		t.Fatalf("testworld: publishing on %s: %v", subject, err)
	}
	return ack.Sequence
}
