package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/eventstore"
	"github.com/keyd-dev/keyd/verifier"
)

// runRevocation: an in-process keyd answers commands; opts.Verifiers
// verifiers follow the stream: one in a `keyd serve` OS process (watched by
// polling its POST /v1/keys/verify over HTTP as fast as it answers), the
// others embedded here with verifier.Connect, each on its own NATS
// connection and Postgres pool (watched through WaitApplied on the
// revocation's sequence, then checked with Verify). For each of
// opts.Revocations keys: the time from sending the revoke request (NATS
// request/reply, from another connection) to each verifier rejecting the
// key. Floor: a plain JetStream publish on the same server, received by as
// many ordered consumers, each on its own connection.
func runRevocation(ctx context.Context, r *runner) (Result, error) {
	nVerifiers, nRevocations := r.opts.Verifiers, r.opts.Revocations
	if nVerifiers < 1 || nRevocations < 1 {
		return Result{}, fmt.Errorf("need at least one verifier and one revocation")
	}
	if err := r.resetDB(ctx); err != nil {
		return Result{}, err
	}
	w, err := r.newWorld(ctx, "revocation")
	if err != nil {
		return Result{}, err
	}
	defer w.close()
	r.phase("starting keyd")
	if _, err := r.startKeyd(ctx, w); err != nil {
		return Result{}, err
	}
	client, err := w.connect("keyd bench client")
	if err != nil {
		return Result{}, err
	}
	if err := definePermission(ctx, client); err != nil {
		return Result{}, err
	}
	const org = "bench-org"
	r.phase("creating %d keys", nRevocations)
	keys, err := createKeys(ctx, client, org, nRevocations, func(d int) { r.tick("created %d of %d keys", d, nRevocations) })
	if err != nil {
		return Result{}, err
	}
	f, err := r.startFanout(ctx, w, nVerifiers)
	if err != nil {
		return Result{}, err
	}
	defer f.poller.CloseIdleConnections()
	lastSeq, rem, local, poller := f.lastSeq, f.rem, f.local, f.poller

	base := time.Now()
	since := func() int64 { return int64(time.Since(base)) }
	var keydLat, localLat, remoteLat, replyLat, slowest latencies
	for i, k := range keys {
		r.tick("revocation %d of %d", i+1, nRevocations)
		expected := lastSeq + 1
		var t0 atomic.Int64
		t0.Store(-1)
		type obs struct {
			d   time.Duration
			err error
		}
		wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		localObs := make(chan obs, len(local))
		for _, v := range local {
			go func() {
				err := v.WaitApplied(wctx, expected)
				d := time.Duration(since() - t0.Load())
				if err == nil {
					var res verifier.Result
					if res, err = v.Verify(wctx, k.Secret); err == nil && res.Code != verifier.CodeRevoked {
						err = fmt.Errorf("an embedded verifier applied sequence %d but says %s", expected, res.Code)
					}
				}
				localObs <- obs{d, err}
			}()
		}
		remoteObs := make(chan obs, 1)
		polling := make(chan struct{})
		go func() {
			first := true
			for {
				code, err := pollVerify(wctx, poller, rem.base, r.adminToken, k.Secret)
				now := since()
				if first {
					first = false
					close(polling)
				}
				if err != nil || code == verifier.CodeRevoked {
					remoteObs <- obs{time.Duration(now - t0.Load()), err}
					return
				}
				if code != verifier.CodeValid {
					remoteObs <- obs{0, fmt.Errorf("keyd serve says %s before the revocation", code)}
					return
				}
			}
		}()
		<-polling
		t0.Store(since())
		var reply domain.KeyResult
		err := request(ctx, client, "keyd.cmd.keys."+org+".revoke", map[string]string{"key_id": k.Key.ID}, &reply)
		replyAt := time.Duration(since() - t0.Load())
		if err == nil && reply.Sequence != expected {
			err = fmt.Errorf("the revocation has sequence %d, want %d (something else wrote to the stream)", reply.Sequence, expected)
		}
		var worst time.Duration
		collect := func(o obs, into *latencies) {
			if o.err != nil && err == nil {
				err = o.err
			}
			*into = append(*into, o.d)
			keydLat = append(keydLat, o.d)
			worst = max(worst, o.d)
		}
		for range local {
			collect(<-localObs, &localLat)
		}
		collect(<-remoteObs, &remoteLat)
		cancel()
		if err != nil {
			return Result{}, fmt.Errorf("revocation %d: %w", i+1, err)
		}
		replyLat = append(replyLat, replyAt)
		slowest = append(slowest, worst)
		lastSeq = expected
		time.Sleep(revocationPause)
	}

	// The floor, on the same server: first quiet, for reference, then while
	// the same HTTP polling of keyd serve goes on (it costs CPU on this
	// machine; both sides bear it), which is the baseline.
	quiet, err := r.publishFloor(ctx, w, "BENCH_FLOOR_QUIET", nVerifiers, nRevocations)
	if err != nil {
		return Result{}, fmt.Errorf("floor: %w", err)
	}
	pctx, stopPolling := context.WithCancel(ctx)
	polled := make(chan error, 1)
	go func() {
		for {
			if _, err := pollVerify(pctx, poller, rem.base, r.adminToken, keys[0].Secret); err != nil {
				if pctx.Err() != nil {
					err = nil
				}
				polled <- err
				return
			}
		}
	}()
	floor, err := r.publishFloor(ctx, w, "BENCH_FLOOR", nVerifiers, nRevocations)
	stopPolling()
	if perr := <-polled; err == nil && perr != nil {
		err = perr
	}
	if err != nil {
		return Result{}, fmt.Errorf("floor: %w", err)
	}
	keydLat, localLat, remoteLat, replyLat, slowest = keydLat.sorted(), localLat.sorted(), remoteLat.sorted(), replyLat.sorted(), slowest.sorted()
	res := Result{
		Name: "revocation_propagation", Value: ms(keydLat.pct(0.99)), Unit: "ms (p99)",
		Baseline: Baseline{Name: "JetStream publish → ordered consumers p99", Value: ms(floor.pct(0.99))},
		Better:   "lower",
		Goal:     "ratio ≤ 4",
		Params: map[string]any{
			"revocations":          nRevocations,
			"verifiers":            nVerifiers,
			"remote_verifiers":     1,
			"samples":              len(keydLat),
			"p50_ms":               ms(keydLat.pct(0.50)),
			"p99_ms":               ms(keydLat.pct(0.99)),
			"max_ms":               ms(keydLat.max()),
			"embedded_p50_ms":      ms(localLat.pct(0.50)),
			"embedded_p99_ms":      ms(localLat.pct(0.99)),
			"remote_p50_ms":        ms(remoteLat.pct(0.50)),
			"remote_p99_ms":        ms(remoteLat.pct(0.99)),
			"remote_max_ms":        ms(remoteLat.max()),
			"all_verifiers_p50_ms": ms(slowest.pct(0.50)),
			"all_verifiers_p99_ms": ms(slowest.pct(0.99)),
			"reply_p50_ms":         ms(replyLat.pct(0.50)),
			"reply_p99_ms":         ms(replyLat.pct(0.99)),
			"floor_p50_ms":         ms(floor.pct(0.50)),
			"floor_p99_ms":         ms(floor.pct(0.99)),
			"floor_max_ms":         ms(floor.max()),
			"quiet_floor_p50_ms":   ms(quiet.pct(0.50)),
			"quiet_floor_p99_ms":   ms(quiet.pct(0.99)),
			"quiet_floor_max_ms":   ms(quiet.max()),
			"floor_background":     "the same HTTP polling of keyd serve runs during the floor",
			"pause_ms":             ms(revocationPause),
			"measured":             "from sending the revoke request to: an embedded verifier's WaitApplied(sequence) returning (then Verify says revoked); keyd serve's HTTP verify answering revoked (tight polling)",
		},
	}
	res.Met = res.Value <= 4*res.Baseline.Value
	return res, nil
}

// revocationPause separates revocations (and the floor's publishes): what
// one leaves behind (the projector's Postgres commit, acks) should not
// weigh on the next.
const revocationPause = 5 * time.Millisecond

// pollVerify asks a keyd's HTTP API to verify secret and returns the code.
func pollVerify(ctx context.Context, c *http.Client, base, token, secret string) (string, error) {
	body, _ := json.Marshal(map[string]string{"key": secret})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/keys/verify", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("keyd serve's verify: status %d: %s", resp.StatusCode, bytes.TrimSpace(b))
	}
	var res verifier.Result
	if err := json.Unmarshal(b, &res); err != nil {
		return "", err
	}
	return res.Code, nil
}

// publishFloor creates the stream name and publishes n messages (the size of a revoke event) to a
// stream configured like KEYD_EVENTS, one at a time from an in-process
// connection (as keyd appends), each received by consumers ordered
// consumers on connections of their own, and returns the time from each
// publish to each receipt.
func (r *runner) publishFloor(ctx context.Context, w *world, name string, consumers, n int) (latencies, error) {
	cfg := eventstore.StreamConfig(1)
	subject := "bench." + strings.ToLower(name)
	cfg.Name, cfg.Subjects, cfg.Description = name, []string{subject + ".>"}, "keyd bench: publish floor"
	if _, err := w.js.CreateStream(ctx, cfg); err != nil {
		return nil, err
	}
	stream, err := w.js.Stream(ctx, domain.StreamName)
	if err != nil {
		return nil, err
	}
	last, err := stream.GetLastMsgForSubject(ctx, domain.EventSubjects)
	if err != nil {
		return nil, err
	}
	payload := last.Data // a revoke event
	base := time.Now()
	var t0 atomic.Int64
	got := make([]chan time.Duration, consumers)
	for i := range consumers {
		nc, err := w.connect(fmt.Sprintf("keyd bench floor consumer %d", i+1))
		if err != nil {
			return nil, err
		}
		js, err := jetstream.New(nc)
		if err != nil {
			return nil, err
		}
		cons, err := js.OrderedConsumer(ctx, cfg.Name, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverNewPolicy})
		if err != nil {
			return nil, err
		}
		ch := make(chan time.Duration, n+1)
		got[i] = ch
		cc, err := cons.Consume(func(m jetstream.Msg) {
			ch <- time.Since(base) - time.Duration(t0.Load())
		}, jetstream.PullHeartbeat(time.Second))
		if err != nil {
			return nil, err
		}
		defer cc.Stop()
	}
	var lat latencies
	for i := range n + 1 { // the first one warms up
		if i > 0 {
			r.tick("floor: publish %d of %d", i, n)
			time.Sleep(revocationPause)
		}
		t0.Store(int64(time.Since(base)))
		if _, err := w.js.Publish(ctx, fmt.Sprintf("%s.%d", subject, i), payload); err != nil {
			return nil, err
		}
		for _, ch := range got {
			select {
			case d := <-ch:
				if i > 0 {
					lat = append(lat, d)
				}
			case <-time.After(15 * time.Second):
				return nil, fmt.Errorf("publish %d: a consumer got nothing within 15s", i)
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	}
	return lat.sorted(), nil
}
