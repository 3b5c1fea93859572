package testenv

import (
	"io"
	mrand "math/rand/v2"
	"sync"
)

// LockedRand returns a deterministic random source, safe for concurrent
// use: a ChaCha8 stream whose 32-byte seed is seed followed by zeros. Two
// readers with the same seed read the same bytes in the same order.
func LockedRand(seed byte) io.Reader {
	var s [32]byte
	s[0] = seed
	return &lockedRand{r: mrand.NewChaCha8(s)}
}

type lockedRand struct {
	mu sync.Mutex
	r  *mrand.ChaCha8
}

func (l *lockedRand) Read(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.Read(p)
}
