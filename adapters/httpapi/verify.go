package httpapi

import (
	"encoding/json"
	"io"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyd-dev/keyd/adapters/commands"
	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/verifier"
)

// verifyRequest is the body of POST /v1/keys/verify.
type verifyRequest struct {
	Key         *string  `json:"key"`
	Permissions []string `json:"permissions"`
	// ClientIP is the address of the client that presented the key, for
	// allowed_cidrs (organization policies).
	ClientIP *string `json:"client_ip"`
	Resource string  `json:"resource"`
}

// verifyBuffers are the request body and reply buffers of one verify
// request, reused across requests.
type verifyBuffers struct{ in, out []byte }

var verifyBufPool = sync.Pool{New: func() any {
	return &verifyBuffers{in: make([]byte, 0, 1024), out: make([]byte, 0, 1024)}
}}

// verify answers POST /v1/keys/verify from this process's in-memory
// verifier: always 200 with {"valid", "code", "key"?, "sequence"} for a
// well-formed request (a malformed key is code "malformed", not an error);
// 400 for a malformed body; 503 unavailable when the verifier is not caught
// up or has been cut off from the stream longer than its staleness bound.
//
// The body is decoded as commands.Decode decodes it (the plain shape by
// decodeVerifyFast, anything else by commands.Decode itself) and the reply
// is the bytes json.Marshal writes (appendVerifyReply), so the shortcuts
// change nothing but the time.
func (s *Server) verify(w http.ResponseWriter, r *http.Request, _ caller) {
	if s.Verifier == nil {
		s.writeError(w, r, domain.Errorf(domain.EUnavailable, "this process has no verifier"))
		return
	}
	bufs := verifyBufPool.Get().(*verifyBuffers)
	defer verifyBufPool.Put(bufs)
	body, err := readBodyInto(w, r, bufs.in[:0])
	bufs.in = body[:0]
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	// key and permissions alias body (bufs.in) on the fast path: used only
	// within this call.
	var permStore [maxFastPerms]string
	key, permissions, resource, ok := decodeVerifyFast(body, &permStore)
	var client netip.Addr // the fast shape has no client_ip
	if !ok {
		var req verifyRequest
		if err := commands.Decode(body, &req); err != nil {
			s.writeError(w, r, err)
			return
		}
		if req.Key == nil {
			s.writeError(w, r, domain.Errorf(domain.EInvalid, `"key" is required: the API key to verify`))
			return
		}
		key, permissions, resource = *req.Key, req.Permissions, req.Resource
		if req.ClientIP != nil {
			a, err := netip.ParseAddr(*req.ClientIP)
			if err != nil {
				s.writeError(w, r, domain.Errorf(domain.EInvalid, "client_ip %q is not an IPv4 or IPv6 address", *req.ClientIP))
				return
			}
			client = a
		}
	}
	// An empty or mistyped key is a well-formed request: 200, code malformed.
	res, err := s.Verifier.VerifyRequest(r.Context(), key, verifier.Request{ClientIP: client, Resource: resource}, permissions...)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if s.Metrics != nil {
		countVerification(s.Metrics.Verifications, res.Code)
	}
	out, ok := appendVerifyReply(bufs.out[:0], &res)
	if !ok {
		if out, err = json.Marshal(res); err != nil {
			writeJSON(w, http.StatusOK, res) // its 500
			return
		}
	} else {
		bufs.out = out[:0]
	}
	out = append(out, '\n')
	h := w.Header()
	h["Content-Type"] = hdrJSON
	h.Set("Content-Length", strconv.Itoa(len(out)))
	h["Cache-Control"] = hdrNoStore
	h["X-Content-Type-Options"] = hdrNoSniff
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(out)
}

// Header values the verify reply shares (as writeJSON sets them), full
// slices so that an append by later code copies them.
var (
	hdrJSON    = []string{"application/json"}[:1:1]
	hdrNoStore = []string{"no-store"}[:1:1]
	hdrNoSniff = []string{"nosniff"}[:1:1]
)

// readBodyInto is readBody reading into dst's storage (which it may grow):
// the same limits and errors.
func readBodyInto(w http.ResponseWriter, r *http.Request, dst []byte) ([]byte, error) {
	if r.ContentLength > commands.MaxBytes {
		return dst, domain.Errorf(domain.ETooLarge, "request body is %d bytes; at most %d bytes are accepted", r.ContentLength, commands.MaxBytes)
	}
	// One byte over the limit is read, so that commands.Decode names the size.
	body := http.MaxBytesReader(w, r.Body, commands.MaxBytes+1)
	for {
		if len(dst) == cap(dst) {
			dst = append(dst, 0)[:len(dst)]
		}
		n, err := body.Read(dst[len(dst):cap(dst)])
		dst = dst[:len(dst)+n]
		if err == io.EOF {
			return dst, nil
		}
		if err != nil {
			return dst, bodyError(err)
		}
	}
}

// verifyCounters caches the verification counters of one CounterVec by
// code, so that counting a verification is an atomic add, not a label hash
// and a lookup.
type verifyCounters struct {
	vec   *prometheus.CounterVec
	codes [6]string
	c     [6]prometheus.Counter
}

var verifyCountersCache atomic.Pointer[verifyCounters]

// countVerification adds one to vec's counter of code.
func countVerification(vec *prometheus.CounterVec, code string) {
	cc := verifyCountersCache.Load()
	if cc == nil || cc.vec != vec {
		cc = &verifyCounters{vec: vec, codes: [6]string{verifier.CodeValid, verifier.CodeMalformed, verifier.CodeNotFound,
			verifier.CodeRevoked, verifier.CodeExpired, verifier.CodeInsufficientPermissions}}
		for i, c := range cc.codes {
			cc.c[i] = vec.WithLabelValues(c)
		}
		verifyCountersCache.Store(cc)
	}
	for i, c := range cc.codes {
		if c == code {
			cc.c[i].Inc()
			return
		}
	}
	vec.WithLabelValues(code).Inc()
}
