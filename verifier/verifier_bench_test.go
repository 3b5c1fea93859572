package verifier

import (
	"context"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/internal/testenv"
	"github.com/keyd-dev/keyd/migrations"
)

// genKeys makes n plausible keys: 1,000 organizations, a dozen permission
// sets, one key in ten with metadata (from 100 distinct values) and one in
// ten with an expiry, one in fifty revoked. With secrets it also returns
// each key's secret (slower: secrets are drawn from crypto/rand).
func genKeys(tb testing.TB, n int, withSecrets bool, dig *domain.Digester) ([]domain.KeyState, []string) {
	tb.Helper()
	r := rand.New(rand.NewPCG(1, 2))
	permSets := [][]string{
		{}, {"posts:read"}, {"posts:read", "posts:write"}, {"billing:read"},
		{"billing:read", "billing:write", "posts:read"}, {"admin"}, {"posts:read", "users:read"},
		{"users:read", "users:write"}, {"deploy"}, {"deploy", "posts:read"}, {"metrics:read"}, {"events:read", "metrics:read"},
	}
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	keys := make([]domain.KeyState, n)
	var secrets []string
	if withSecrets {
		secrets = make([]string, n)
	}
	for i := range keys {
		org := fmt.Sprintf("org_%d", r.IntN(1000))
		id, err := domain.NewULID(base.Add(time.Duration(i)*time.Millisecond), cryptoRand{r})
		if err != nil {
			tb.Fatal(err)
		}
		var d domain.Digest
		if withSecrets {
			if secrets[i], err = domain.NewSecret("sk", cryptoRand{r}); err != nil {
				tb.Fatal(err)
			}
			d = dig.Digest(secrets[i])
		} else {
			for j := range d {
				d[j] = byte(r.Uint32())
			}
		}
		k := domain.KeyState{
			ID: domain.KeyIDPrefix + id, OrgID: org, Name: fmt.Sprintf("key %d", i),
			Owner: domain.Owner{Type: "organization", ID: org}, Digest: hex.EncodeToString(d[:]),
			Permissions: permSets[r.IntN(len(permSets))], Status: domain.StatusActive, Version: 1,
		}
		if i%10 == 3 {
			k.Metadata = map[string]string{"team": fmt.Sprintf("team-%d", r.IntN(100))}
		}
		if i%10 == 7 {
			exp := base.AddDate(5, 0, r.IntN(365))
			k.ExpiresAt = &exp
		}
		if i%50 == 11 {
			k.Status = domain.StatusRevoked
		}
		keys[i] = k
	}
	return keys, secrets
}

// cryptoRand adapts math/rand for the ids and secrets of test data.
type cryptoRand struct{ r *rand.Rand }

func (c cryptoRand) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(c.r.Uint32())
	}
	return len(p), nil
}

// memoryVerifier builds a ready verifier holding keys, straight in memory
// (no NATS, no Postgres), with last-use tracking on.
func memoryVerifier(keys []domain.KeyState, dig *domain.Digester) *Verifier {
	v := New(Config{Digester: dig, MaxStaleness: time.Hour,
		OnLastUsed: func(context.Context, []LastUsed) error { return nil }})
	a := newApplier(v)
	for i := range keys {
		var d domain.Digest
		hex.Decode(d[:], []byte(keys[i].Digest))
		st := a.in.entryFromKey(&keys[i], a.grantSlices(keys[i].Permissions, keys[i].Roles, keys[i].Resources))
		a.put(d, &st)
	}
	a.publishWork()
	v.contact.touch(v.contact.clock())
	v.booted.Store(true)
	// The coarse clock runs as in a started verifier (Close stops it).
	ctx, cancel := context.WithCancel(context.Background())
	v.cancel = cancel
	go func() { v.clockLoop(ctx); close(v.done) }()
	return v
}

// TestVerifyAllocs: Verify allocates nothing, whatever the verdict.
func TestVerifyAllocs(t *testing.T) {
	dig := domain.NewDigester(testSecret)
	keys, secrets := genKeys(t, 1000, true, dig)
	v := memoryVerifier(keys, dig)
	defer v.Close()
	var valid, withPerm, revoked string
	for i, k := range keys {
		switch {
		case k.Status == domain.StatusRevoked && revoked == "":
			revoked = secrets[i]
		case k.Status == domain.StatusActive && k.ExpiresAt == nil && len(k.Permissions) == 2 && k.Permissions[0] == "posts:read" && withPerm == "":
			withPerm = secrets[i]
		case k.Status == domain.StatusActive && k.ExpiresAt == nil && valid == "":
			valid = secrets[i]
		}
	}
	ctx := context.Background()
	cases := []struct {
		name, secret, code string
		perms              []string
	}{
		{"valid", valid, CodeValid, nil},
		{"valid with permissions", withPerm, CodeValid, []string{"posts:write", "posts:read"}},
		{"insufficient permissions", withPerm, CodeInsufficientPermissions, []string{"admin"}},
		{"revoked", revoked, CodeRevoked, nil},
		{"not found", newSecret(t), CodeNotFound, nil},
		{"malformed", valid[:len(valid)-1], CodeMalformed, nil},
	}
	for _, c := range cases {
		r, err := v.Verify(ctx, c.secret, c.perms...)
		if err != nil || r.Code != c.code {
			t.Fatalf("%s: %v %v, want %s", c.name, r.Code, err, c.code)
		}
		allocs := testing.AllocsPerRun(1000, func() {
			r, _ = v.Verify(ctx, c.secret, c.perms...)
		})
		t.Logf("%s: %.0f allocs per Verify", c.name, allocs)
		if allocs != 0 {
			t.Errorf("%s: %.1f allocs per Verify, want 0", c.name, allocs)
		}
	}
	// Literal variadic arguments do not escape either.
	if a := testing.AllocsPerRun(1000, func() { v.Verify(ctx, withPerm, "posts:read") }); a != 0 {
		t.Errorf("Verify(ctx, secret, \"posts:read\"): %.1f allocs, want 0", a)
	}
}

const benchKeys = 1_000_000

var (
	benchOnce    atomic.Bool
	benchV       *Verifier
	benchSecrets []string
	benchFloor   map[domain.Digest]*slot
	benchDig     = domain.NewDigester(testSecret)
)

func benchSetup(b *testing.B) {
	if benchOnce.Load() {
		return
	}
	b.StopTimer()
	start := time.Now()
	keys, secrets := genKeys(b, benchKeys, true, benchDig)
	benchV = memoryVerifier(keys, benchDig)
	benchSecrets = secrets
	benchFloor = make(map[domain.Digest]*slot, len(secrets))
	for _, s := range secrets {
		benchFloor[benchDig.Digest(s)] = new(slot)
	}
	benchOnce.Store(true)
	b.Logf("built %d keys in %s", len(secrets), time.Since(start).Round(time.Millisecond))
	b.StartTimer()
}

// BenchmarkVerify: Verify against 1,000,000 keys held in memory, from all
// CPUs at once, over the keys in a random order (cache misses included).
func BenchmarkVerify(b *testing.B) {
	benchSetup(b)
	v, secrets := benchV, benchSecrets
	ctx := context.Background()
	unknown := newSecret(b)
	var seed atomic.Uint64
	run := func(b *testing.B, pick func(r *rand.Rand) string, perms ...string) {
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			r := rand.New(rand.NewPCG(seed.Add(1), 7))
			for pb.Next() {
				if _, err := v.Verify(ctx, pick(r), perms...); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	b.Run("any key", func(b *testing.B) { run(b, func(r *rand.Rand) string { return secrets[r.IntN(len(secrets))] }) })
	b.Run("any key, one permission", func(b *testing.B) {
		run(b, func(r *rand.Rand) string { return secrets[r.IntN(len(secrets))] }, "posts:read")
	})
	b.Run("1,000 hot keys", func(b *testing.B) { run(b, func(r *rand.Rand) string { return secrets[r.IntN(1000)] }) })
	b.Run("not found", func(b *testing.B) { run(b, func(*rand.Rand) string { return unknown }) })
	b.Run("malformed", func(b *testing.B) { run(b, func(*rand.Rand) string { return unknown[:40] }) })
}

// BenchmarkDigestMapFloor is the floor under BenchmarkVerify: the keyed
// digest and one plain Go map lookup over the same 1,000,000 keys.
func BenchmarkDigestMapFloor(b *testing.B) {
	benchSetup(b)
	secrets, m := benchSecrets, benchFloor
	var seed atomic.Uint64
	var miss atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		r := rand.New(rand.NewPCG(seed.Add(1), 7))
		for pb.Next() {
			if m[benchDig.Digest(secrets[r.IntN(len(secrets))])] == nil {
				miss.Add(1)
			}
		}
	})
	if miss.Load() != 0 {
		b.Fatal("floor lookups missed")
	}
}

// snapshotDB returns a pool on a fresh database whose verification
// snapshot holds n generated keys (written with COPY), checkpoint n.
func snapshotDB(b *testing.B, n int) *pgxpool.Pool {
	b.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testenv.PostgresURL(b))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	if _, err := migrations.Apply(ctx, pool, nil); err != nil {
		b.Fatal(err)
	}
	keys, _ := genKeys(b, n, false, nil)
	start := time.Now()
	copied, err := pool.CopyFrom(ctx, pgx.Identifier{"verification_keys"},
		[]string{"digest", "key_id", "org_id", "owner_type", "owner_id", "name", "permissions", "expires_at", "status", "metadata", "last_seq"},
		pgx.CopyFromSlice(len(keys), func(i int) ([]any, error) {
			k := &keys[i]
			var d domain.Digest
			hex.Decode(d[:], []byte(k.Digest))
			md := k.Metadata
			if md == nil {
				md = map[string]string{}
			}
			return []any{d[:], k.ID, k.OrgID, k.Owner.Type, k.Owner.ID, k.Name, k.Permissions, k.ExpiresAt, k.Status, md, int64(i + 1)}, nil
		}))
	if err != nil || copied != int64(n) {
		b.Fatalf("COPY: %d rows, %v", copied, err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO projection_checkpoints (name, last_seq) VALUES ('read_models', $1)`, n); err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `VACUUM ANALYZE verification_keys`); err != nil {
		b.Fatal(err)
	}
	b.Logf("COPY of %d rows took %s", n, time.Since(start).Round(time.Millisecond))
	return pool
}

// BenchmarkBoot: load a 1,000,000-key verification snapshot from Postgres
// into a verifier's tables; reports seconds per boot and heap bytes per key.
func BenchmarkBoot(b *testing.B) {
	pool := snapshotDB(b, benchKeys)
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		v := New(Config{Pool: pool, Digester: benchDig})
		a := newApplier(v)
		b.StartTimer()
		start := time.Now()
		res, err := v.loadSnapshot(ctx, a)
		if err != nil || !res.ok || res.keys != benchKeys {
			b.Fatalf("loadSnapshot: %+v %v", res, err)
		}
		a.publishWork()
		took := time.Since(start)
		b.StopTimer()
		a = nil
		runtime.GC()
		runtime.ReadMemStats(&after)
		runtime.KeepAlive(v)
		b.ReportMetric(took.Seconds(), "s/boot")
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/benchKeys, "heap-bytes/key")
		b.StartTimer()
	}
}

// BenchmarkBootRawRead reads the same snapshot query into nothing: the
// floor under BenchmarkBoot (Postgres and the wire).
func BenchmarkBootRawRead(b *testing.B) {
	pool := snapshotDB(b, benchKeys)
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		tx, err := pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
		if err != nil {
			b.Fatal(err)
		}
		rows, err := tx.Query(ctx, snapshotQuery)
		if err != nil {
			b.Fatal(err)
		}
		n := 0
		for rows.Next() {
			_ = rows.RawValues()
			n++
		}
		if rows.Err() != nil || n != benchKeys {
			b.Fatalf("read %d rows: %v", n, rows.Err())
		}
		tx.Rollback(ctx)
		b.ReportMetric(time.Since(start).Seconds(), "s/read")
	}
}
