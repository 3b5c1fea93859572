package postgres

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestListingFiltersUseIndexes fills the key listing with 50,000 keys of 4
// organizations (large ones: where a scan of the organization would cost) and checks, with EXPLAIN, that each listing filter is
// served by its index, not a scan of the table (the plans are logged; with
// KEYD_EXPLAIN_OUT set they are also written to that file).
func TestListingFiltersUseIndexes(t *testing.T) {
	t.Parallel()
	r, pool := newReadModel(t)
	ctx := context.Background()
	_, err := pool.Exec(ctx, `
INSERT INTO keys (key_id, org_id, name, owner_type, owner_id, mask, permissions, status, created_at, expires_at,
                  metadata, version, last_seq, roles, resources, effective_permissions)
SELECT 'key_' || lpad(to_hex(i), 26, '0'), 'org_' || (i % 4),
       (ARRAY['CI deploy','Alice laptop','Bob phone','billing export'])[1 + i % 4] || ' ' || i,
       CASE WHEN i % 3 = 0 THEN 'organization' ELSE 'user' END,
       CASE WHEN i % 3 = 0 THEN 'org_' || (i % 4) ELSE 'user_' || (i % 997) END,
       'sk_…' || lpad(to_hex(i % 65536), 4, '0'), ARRAY['posts:read'], 'active', now(),
       CASE WHEN i % 50 = 0 THEN now() + (i % 1000) * interval '1 day' END,
       '{}', 1, i, ARRAY['r' || (i % 50)], '{}',
       ARRAY['posts:read', 'p' || (i % 5000)]
FROM generate_series(1, 50000) AS i`)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `ANALYZE keys`); err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(10 * 24 * time.Hour) // the rows expire from the database's now()
	tests := []struct {
		name  string
		f     KeyFilter
		index []string // one of them
	}{
		{"owner_id", KeyFilter{OwnerID: "user_7"}, []string{"keys_org_owner"}},
		// Two keys in three are users': newest first until the page is full.
		{"owner_type", KeyFilter{OwnerType: "user"}, []string{"keys_org_owner", "keys_org_key_id", "keys_pkey"}},
		{"q substring of the name", KeyFilter{Q: "laptop 123"}, []string{"keys_name_trgm"}},
		{"q, four characters: name or mask", KeyFilter{Q: "00ff"}, []string{"keys_org_mask4"}},
		{"permission", KeyFilter{Permission: "p43"}, []string{"keys_effective_permissions"}},
		{"expires_before", KeyFilter{ExpiresBefore: &exp}, []string{"keys_org_expires"}},
	}
	var out strings.Builder
	for _, tt := range tests {
		q, args, err := listQuery("org_3", tt.f, 10, clockNow)
		if err != nil {
			t.Fatal(err)
		}
		rows, err := pool.Query(ctx, "EXPLAIN "+q, args...)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		plan := strings.Join(lines, "\n")
		fmt.Fprintf(&out, "-- %s: %s\n%s\n\n", tt.name, q, plan)
		used := false
		for _, ix := range tt.index {
			used = used || strings.Contains(plan, ix)
		}
		if !used || strings.Contains(plan, "Seq Scan") {
			t.Errorf("%s: the plan does not use %s:\n%s", tt.name, tt.index, plan)
		}
		if _, _, err := r.ListKeys(ctx, "org_3", tt.f); err != nil {
			t.Errorf("%s: ListKeys: %v", tt.name, err)
		}
	}
	t.Log("\n" + out.String())
	if p := os.Getenv("KEYD_EXPLAIN_OUT"); p != "" {
		_ = os.WriteFile(p, []byte(out.String()), 0o644)
	}
}
