package eventstore

import (
	"testing"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/eventstore/storetest"
)

func TestMemoryConformance(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T) domain.EventStore { return NewMemory() })
	t.Run("Signed", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) domain.EventStore { return NewSignedMemory(testSigner) })
	})
}

func TestMemoryTypeAndLastSequence(t *testing.T) {
	t.Parallel()
	m := NewMemory()
	ctx := t.Context()
	if n, err := m.LastSequence(ctx); err != nil || n != 0 {
		t.Fatalf("LastSequence of an empty store = %d, %v", n, err)
	}
	seq, err := m.Append(ctx,
		domain.AppendMsg{Subject: domain.KeySubject("o", "k1"), MsgID: "e1", Type: domain.EventKeyRotated, Data: []byte("{}")},
		domain.AppendMsg{Subject: domain.KeySubject("o", "k2"), MsgID: "e2", Type: domain.EventKeyCreated, Data: []byte("{}")},
	)
	if err != nil || seq != 2 {
		t.Fatalf("Append = %d, %v", seq, err)
	}
	if n, err := m.LastSequence(ctx); err != nil || n != 2 {
		t.Fatalf("LastSequence = %d, %v", n, err)
	}
	if m.Type(1) != domain.EventKeyRotated || m.Type(2) != domain.EventKeyCreated || m.Type(3) != "" {
		t.Fatalf("types = %q %q %q", m.Type(1), m.Type(2), m.Type(3))
	}
}
