package projections

import (
	"slices"
	"testing"

	"github.com/keyd-dev/keyd/domain"
)

// TestKeyRowsInKeyIDOrder: a batch's key rows are upserted in key id order,
// the order in which verifiers' last-use flushes lock the same rows, so the
// projector and the verifiers can never deadlock each other.
func TestKeyRowsInKeyIDOrder(t *testing.T) {
	t.Parallel()
	ids := []string{"key_01M8C", "key_01M8A", "key_01M8B", "key_01M8A"}
	var ds []decoded
	for i, id := range ids {
		ds = append(ds, decoded{seq: uint64(i + 1), key: &domain.KeyState{ID: id, OrgID: "o", Version: int64(i + 1)}, digest: []byte(id)})
	}
	rs, err := buildRows(ds)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"key_01M8A", "key_01M8B", "key_01M8C"}; !slices.Equal(rs.keys.keyID, want) {
		t.Fatalf("key rows %v, want %v", rs.keys.keyID, want)
	}
	// The collapsed row of key_01M8A is its last event (seq 4).
	if rs.keys.lastSeq[0] != 4 {
		t.Fatalf("key_01M8A row from seq %d, want 4", rs.keys.lastSeq[0])
	}
}
