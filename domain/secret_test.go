package domain_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"hash/crc32"
	"io"
	"math/big"
	"strings"
	"testing"

	"github.com/keyd-dev/keyd/domain"
)

const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// checksum is an independent implementation of the secret's checksum:
// CRC32 (IEEE) of s, as 6 base62 digits.
func checksum(s string) string {
	v := uint64(crc32.ChecksumIEEE([]byte(s)))
	out := make([]byte, 6)
	for i := 5; i >= 0; i-- {
		out[i] = base62[v%62]
		v /= 62
	}
	return string(out)
}

// withChecksum returns s followed by its checksum: a secret-shaped string
// whose checksum is right whatever else is wrong with it.
func withChecksum(s string) string { return s + checksum(s) }

// base62Body encodes 32 bytes as 43 base62 digits, most significant first.
func base62Body(raw []byte) string {
	n := new(big.Int).SetBytes(raw)
	out := make([]byte, 43)
	m := new(big.Int)
	for i := 42; i >= 0; i-- {
		n.DivMod(n, big.NewInt(62), m)
		out[i] = base62[m.Int64()]
	}
	return string(out)
}

func isBase62(s string) bool {
	for i := 0; i < len(s); i++ {
		if strings.IndexByte(base62, s[i]) < 0 {
			return false
		}
	}
	return true
}

// countingReader counts the bytes read from it.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func seqBytes(start byte) []byte {
	b := make([]byte, 32)
	for i := range b {
		b[i] = start + byte(i)*7
	}
	return b
}

func TestNewSecretShape(t *testing.T) {
	t.Parallel()
	ones := bytes.Repeat([]byte{0xff}, 32)
	tests := []struct {
		name   string
		prefix string
		raw    []byte
	}{
		{"zeros", "sk", make([]byte, 32)},
		{"max 256-bit body", "sk", ones},
		{"sequence", "sk", seqBytes(3)},
		{"prefix with underscore", "my_app", seqBytes(11)},
		{"one-char prefix", "k", seqBytes(19)},
		{"32-char prefix", strings.Repeat("P", 32), seqBytes(23)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &countingReader{r: bytes.NewReader(append(slices32(tt.raw), 0xAA, 0xBB))}
			got, err := domain.NewSecret(tt.prefix, r)
			if err != nil {
				t.Fatalf("NewSecret: %v", err)
			}
			if r.n != 32 {
				t.Errorf("NewSecret read %d bytes, want 32 (256 bits)", r.n)
			}
			body := base62Body(tt.raw)
			want := withChecksum(tt.prefix + "_" + body)
			if got != want {
				t.Errorf("NewSecret = %q, want %q", got, want)
			}
			if len(got) != len(tt.prefix)+1+43+6 {
				t.Errorf("len = %d, want %d", len(got), len(tt.prefix)+1+43+6)
			}
			if !isBase62(got[len(tt.prefix)+1:]) {
				t.Errorf("tail of %q is not base62", got)
			}
			if !domain.ValidSecret(got) {
				t.Errorf("ValidSecret(%q) = false", got)
			}
			if p := domain.SecretPrefix(got); p != tt.prefix {
				t.Errorf("SecretPrefix = %q, want %q", p, tt.prefix)
			}
		})
	}
}

func slices32(b []byte) []byte { return append([]byte(nil), b...) }

func TestNewSecretDeterministicAndDistinct(t *testing.T) {
	t.Parallel()
	a1, _ := domain.NewSecret("sk", bytes.NewReader(seqBytes(1)))
	a2, _ := domain.NewSecret("sk", bytes.NewReader(seqBytes(1)))
	b, _ := domain.NewSecret("sk", bytes.NewReader(seqBytes(2)))
	if a1 != a2 {
		t.Errorf("same random bytes gave %q and %q", a1, a2)
	}
	if a1 == b {
		t.Errorf("different random bytes gave the same secret %q", a1)
	}
	// A single flipped bit of entropy changes the body.
	raw := seqBytes(1)
	raw[31] ^= 1
	c, _ := domain.NewSecret("sk", bytes.NewReader(raw))
	if c == a1 {
		t.Errorf("flipping the lowest bit did not change the secret")
	}
	raw = seqBytes(1)
	raw[0] ^= 0x80
	c, _ = domain.NewSecret("sk", bytes.NewReader(raw))
	if c == a1 {
		t.Errorf("flipping the highest bit did not change the secret")
	}
	// crypto/rand gives distinct secrets.
	seen := map[string]bool{}
	for range 100 {
		s, err := domain.NewSecret("sk", rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if seen[s] {
			t.Fatalf("duplicate secret %q", s)
		}
		seen[s] = true
	}
}

func TestNewSecretErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		prefix   string
		r        io.Reader
		wantCode string
	}{
		{"empty prefix", "", bytes.NewReader(seqBytes(0)), domain.EInvalid},
		{"prefix with dash", "s-k", bytes.NewReader(seqBytes(0)), domain.EInvalid},
		{"33-char prefix", strings.Repeat("a", 33), bytes.NewReader(seqBytes(0)), domain.EInvalid},
		{"unicode prefix", "ключ", bytes.NewReader(seqBytes(0)), domain.EInvalid},
		{"short reader", "sk", bytes.NewReader(make([]byte, 31)), domain.EInternal},
		{"empty reader", "sk", bytes.NewReader(nil), domain.EInternal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := domain.NewSecret(tt.prefix, tt.r)
			if err == nil {
				t.Fatalf("NewSecret = %q, want an error", got)
			}
			if code := domain.ErrorCode(err); code != tt.wantCode {
				t.Errorf("code = %q, want %q (%v)", code, tt.wantCode, err)
			}
		})
	}
}

func mustSecret(t testing.TB, prefix string, raw []byte) string {
	t.Helper()
	s, err := domain.NewSecret(prefix, bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("NewSecret(%q): %v", prefix, err)
	}
	return s
}

var testPrefixes = []string{"sk", "k", "my_app", "sk_live", "A1_b2_", "_x", strings.Repeat("Z", 32)}

func TestValidSecretAcceptsGenerated(t *testing.T) {
	t.Parallel()
	for _, prefix := range testPrefixes {
		for i := range 20 {
			raw := make([]byte, 32)
			if i > 0 {
				rand.Read(raw)
			}
			s := mustSecret(t, prefix, raw)
			if got, want := domain.ValidSecret(s), true; got != want {
				t.Errorf("ValidSecret(%q) = %v, want %v", s, got, want)
			}
		}
	}
}

func TestValidSecretRejectsEverySingleCharacterChange(t *testing.T) {
	t.Parallel()
	alphabet := base62 + "_-.+/ \x00\xff"
	for _, prefix := range testPrefixes {
		s := mustSecret(t, prefix, seqBytes(byte(len(prefix))))
		b := []byte(s)
		for i := range b {
			orig := b[i]
			for j := 0; j < len(alphabet); j++ {
				c := alphabet[j]
				if c == orig {
					continue
				}
				b[i] = c
				if domain.ValidSecret(string(b)) {
					t.Errorf("ValidSecret(%q) = true after changing byte %d of %q from %q to %q", b, i, s, orig, c)
				}
			}
			b[i] = orig
		}
		// Swapping two adjacent different characters is caught too.
		for i := 0; i+1 < len(b); i++ {
			if b[i] == b[i+1] {
				continue
			}
			b[i], b[i+1] = b[i+1], b[i]
			if domain.ValidSecret(string(b)) {
				t.Errorf("ValidSecret accepted %q: %q with bytes %d and %d swapped", b, s, i, i+1)
			}
			b[i], b[i+1] = b[i+1], b[i]
		}
	}
}

func TestValidSecretRejectsTruncationAndExtension(t *testing.T) {
	t.Parallel()
	for _, prefix := range testPrefixes {
		s := mustSecret(t, prefix, seqBytes(5))
		for n := 0; n < len(s); n++ {
			if domain.ValidSecret(s[:n]) {
				t.Errorf("ValidSecret(%q) = true: %q truncated to %d bytes", s[:n], s, n)
			}
			if n > 0 && domain.ValidSecret(s[n:]) {
				t.Errorf("ValidSecret(%q) = true: %q without its first %d bytes", s[n:], s, n)
			}
		}
		for _, ext := range []string{"a", "0", "_", "\n", " ", "Zz"} {
			if domain.ValidSecret(s + ext) {
				t.Errorf("ValidSecret(%q) = true", s+ext)
			}
			if domain.ValidSecret(ext + s) {
				t.Errorf("ValidSecret(%q) = true", ext+s)
			}
		}
	}
}

func TestValidSecretTable(t *testing.T) {
	t.Parallel()
	good := mustSecret(t, "sk", seqBytes(9))
	body := good[3 : 3+43]
	sum := good[len(good)-6:]
	wrongSum := []byte(sum)
	wrongSum[0] = base62[(strings.IndexByte(base62, wrongSum[0])+1)%62]
	tests := []struct {
		name string
		s    string
		want bool
	}{
		{"generated", good, true},
		{"hand-built with checksum", withChecksum("sk_" + body), true},
		{"32-char prefix", withChecksum(strings.Repeat("p", 32) + "_" + body), true},
		{"prefix of underscores only", withChecksum("__" + body), true},
		{"wrong checksum", "sk_" + body + string(wrongSum), false},
		{"checksum of another string", "sk_" + body + checksum("pk_"+body), false},
		{"lowercase checksum", "sk_" + body + strings.ToLower(sum), strings.ToLower(sum) == sum},
		{"empty", "", false},
		{"only separator", "_", false},
		{"too long: 33-char prefix", withChecksum(strings.Repeat("p", 33) + "_" + body), false},
		{"empty prefix", withChecksum("_" + body), false},
		{"prefix with dash", withChecksum("s-k_" + body), false},
		{"prefix with dot", withChecksum("s.k_" + body), false},
		{"prefix with space", withChecksum("s k_" + body), false},
		{"unicode prefix", withChecksum("ké_" + body), false},
		{"no separator", withChecksum("skx" + body), false},
		{"dash in body", withChecksum("sk_" + body[:10] + "-" + body[11:]), false},
		{"underscore in body", withChecksum("sk_" + body[:10] + "_" + body[11:]), false},
		{"space in body", withChecksum("sk_" + body[:42] + " "), false},
		{"NUL in body", withChecksum("sk_\x00" + body[1:]), false},
		{"non-ASCII in body", withChecksum("sk_" + body[:41] + "é"), false},
		{"body one short", withChecksum("sk_" + body[:42]), false},
		{"body one long", withChecksum("sk_" + body + "A"), false},
		{"non-base62 checksum", "sk_" + body + "+/+/+/", false},
		{"whitespace around", " " + good, false},
		{"newline after", good + "\n", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := domain.ValidSecret(tt.s); got != tt.want {
				t.Errorf("ValidSecret(%q) = %v, want %v", tt.s, got, tt.want)
			}
		})
	}
}

func TestValidSecretLengthBounds(t *testing.T) {
	t.Parallel()
	body := base62Body(seqBytes(4))
	for n := 1; n <= 40; n++ {
		s := withChecksum(strings.Repeat("a", n) + "_" + body)
		got, want := domain.ValidSecret(s), n <= domain.MaxPrefixLen
		if got != want {
			t.Errorf("prefix of %d chars: ValidSecret = %v, want %v", n, got, want)
		}
		if want && len(s) > domain.MaxSecretLen {
			t.Errorf("valid secret of %d bytes exceeds MaxSecretLen %d", len(s), domain.MaxSecretLen)
		}
	}
	if got, want := domain.MaxSecretLen, 32+1+43+6; got != want {
		t.Errorf("MaxSecretLen = %d, want %d", got, want)
	}
}

func TestMask(t *testing.T) {
	t.Parallel()
	tests := []struct {
		prefix string
	}{{"sk"}, {"k"}, {"my_app"}, {strings.Repeat("Q", 32)}}
	for _, tt := range tests {
		s := mustSecret(t, tt.prefix, seqBytes(7))
		got := domain.Mask(s)
		want := tt.prefix + "_…" + s[len(s)-4:]
		if got != want {
			t.Errorf("Mask(%q) = %q, want %q", s, got, want)
		}
		if strings.Contains(got, s[len(tt.prefix)+1:len(s)-4]) {
			t.Errorf("Mask(%q) = %q reveals more than the last four characters", s, got)
		}
	}
	// The contract's example shape.
	s := withChecksum("sk_" + base62Body(seqBytes(1)))
	if got := domain.Mask(s); !strings.HasPrefix(got, "sk_…") || len([]rune(got)) != len("sk_")+1+4 {
		t.Errorf("Mask(%q) = %q, want sk_… and four characters", s, got)
	}
	// Short input does not panic and reveals nothing.
	for _, in := range []string{"", "abc", "sk_abcd"} {
		if got := domain.Mask(in); strings.Contains(got, "abc") {
			t.Errorf("Mask(%q) = %q", in, got)
		}
	}
}

func refDigest(deploymentSecret []byte, s string) [32]byte {
	key := domain.DeriveKey(deploymentSecret, "keyd key digest v1")
	m := hmac.New(sha256.New, key)
	m.Write([]byte(s))
	var out [32]byte
	copy(out[:], m.Sum(nil))
	return out
}

func TestDeriveKey(t *testing.T) {
	t.Parallel()
	secret := []byte("deployment secret")
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("keyd key digest v1"))
	if got, want := domain.DeriveKey(secret, "keyd key digest v1"), m.Sum(nil); !bytes.Equal(got, want) {
		t.Errorf("DeriveKey = %x, want %x", got, want)
	}
	if bytes.Equal(domain.DeriveKey(secret, "a"), domain.DeriveKey(secret, "b")) {
		t.Errorf("DeriveKey gives the same key for different labels")
	}
}

func TestDigesterMatchesHMAC(t *testing.T) {
	t.Parallel()
	secrets := [][]byte{[]byte("s3cret"), {}, bytes.Repeat([]byte{0x42}, 200)}
	inputs := []string{
		"", "a", mustSecret(t, "sk", seqBytes(1)), mustSecret(t, strings.Repeat("x", 32), seqBytes(2)),
		strings.Repeat("x", 55), strings.Repeat("x", 56), strings.Repeat("y", 64),
		strings.Repeat("z", 127), strings.Repeat("z", 128), strings.Repeat("z", 129),
		strings.Repeat("long input ", 100),
	}
	for _, ds := range secrets {
		d := domain.NewDigester(ds)
		for _, in := range inputs {
			got, want := d.Digest(in), refDigest(ds, in)
			if got != domain.Digest(want) {
				t.Errorf("Digest(len %d) with deployment secret %q = %x, want %x", len(in), ds, got, want)
			}
		}
	}
}

func TestDigesterDependsOnDeploymentSecretAndInput(t *testing.T) {
	t.Parallel()
	s := mustSecret(t, "sk", seqBytes(3))
	a := domain.NewDigester([]byte("one")).Digest(s)
	b := domain.NewDigester([]byte("two")).Digest(s)
	if a == b {
		t.Errorf("different deployment secrets give the same digest %x", a)
	}
	d := domain.NewDigester([]byte("one"))
	if got := d.Digest(s); got != a {
		t.Errorf("Digest is not deterministic: %x then %x", a, got)
	}
	if d.Digest(s) == d.Digest(s[:len(s)-1]+"x") {
		t.Errorf("different secrets give the same digest")
	}
	// The digest is not a plain (unkeyed) hash.
	if plain := sha256.Sum256([]byte(s)); a == domain.Digest(plain) {
		t.Errorf("Digest is an unkeyed SHA-256")
	}
}

func TestDigesterConcurrent(t *testing.T) {
	t.Parallel()
	d := domain.NewDigester([]byte("shared"))
	s := mustSecret(t, "sk", seqBytes(8))
	want := refDigest([]byte("shared"), s)
	done := make(chan bool)
	for range 8 {
		go func() {
			ok := true
			for range 200 {
				ok = ok && d.Digest(s) == domain.Digest(want)
			}
			done <- ok
		}()
	}
	for range 8 {
		if !<-done {
			t.Errorf("concurrent Digest gave a wrong digest")
		}
	}
}

// TestNoAllocations is not parallel: AllocsPerRun counts every allocation of
// the process, so it runs while no other test does.
func TestNoAllocations(t *testing.T) {
	s := mustSecret(t, "sk", seqBytes(6))
	bad := s[:len(s)-1] + "x"
	long := strings.Repeat("a", 128)
	d := domain.NewDigester([]byte("secret"))
	var sink bool
	var dsink domain.Digest
	tests := []struct {
		name string
		f    func()
	}{
		{"ValidSecret valid", func() { sink = domain.ValidSecret(s) }},
		{"ValidSecret invalid", func() { sink = domain.ValidSecret(bad) }},
		{"Digest", func() { dsink = d.Digest(s) }},
		{"Digest of 128 bytes", func() { dsink = d.Digest(long) }},
	}
	for _, tt := range tests {
		if got := testing.AllocsPerRun(200, tt.f); got != 0 {
			t.Errorf("%s: %v allocations per run, want 0", tt.name, got)
		}
	}
	_, _ = sink, dsink
}

func FuzzValidSecret(f *testing.F) {
	f.Add("", []byte{}, uint16(0), byte('a'))
	f.Add(mustSecret(f, "sk", seqBytes(1)), seqBytes(1), uint16(3), byte('Z'))
	f.Add(mustSecret(f, "my_app", seqBytes(2)), seqBytes(2), uint16(50), byte('_'))
	f.Add("sk_"+strings.Repeat("0", 49), []byte("x"), uint16(2), byte('-'))
	f.Add(strings.Repeat("a", 200), []byte{0xff}, uint16(1000), byte(0))
	f.Fuzz(func(t *testing.T, s string, seed []byte, pos uint16, c byte) {
		// Arbitrary input: never panics; a valid one has a consistent shape.
		if domain.ValidSecret(s) {
			p := domain.SecretPrefix(s)
			if !domain.ValidPrefix(p) {
				t.Fatalf("ValidSecret(%q) but its prefix %q is not valid", s, p)
			}
			if !strings.HasPrefix(s, p+"_") || len(s) != len(p)+1+49 || len(s) > domain.MaxSecretLen {
				t.Fatalf("ValidSecret(%q) but prefix %q and length %d do not fit", s, p, len(s))
			}
			if got, want := domain.Mask(s), p+"_…"+s[len(s)-4:]; got != want {
				t.Fatalf("Mask(%q) = %q, want %q", s, got, want)
			}
			if withChecksum(s[:len(s)-6]) != s {
				t.Fatalf("ValidSecret(%q) with a wrong checksum", s)
			}
		}
		// A generated secret with one byte changed is invalid, unless the
		// byte is unchanged.
		prefix := testPrefixes[int(pos)%len(testPrefixes)]
		raw := make([]byte, 32)
		copy(raw, seed)
		secret := mustSecret(t, prefix, raw)
		if !domain.ValidSecret(secret) {
			t.Fatalf("generated secret %q is invalid", secret)
		}
		b := []byte(secret)
		i := int(pos) % len(b)
		unchanged := b[i] == c
		b[i] = c
		if got := domain.ValidSecret(string(b)); got != unchanged {
			t.Fatalf("ValidSecret(%q) = %v after setting byte %d of %q to %q", b, got, i, secret, c)
		}
	})
}

func FuzzDigest(f *testing.F) {
	f.Add([]byte("k"), "")
	f.Add([]byte(""), mustSecret(f, "sk", seqBytes(1)))
	f.Add(bytes.Repeat([]byte{1}, 100), strings.Repeat("x", 129))
	f.Fuzz(func(t *testing.T, deploymentSecret []byte, s string) {
		got := domain.NewDigester(deploymentSecret).Digest(s)
		if want := refDigest(deploymentSecret, s); got != domain.Digest(want) {
			t.Fatalf("Digest(%q) = %x, want %x", s, got, want)
		}
	})
}
