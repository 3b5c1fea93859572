package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/eventstore"
)

// runCommandThroughput: opts.CommandClients NATS clients (a connection
// each) send create requests to an in-process keyd, one at a time each, as
// fast as they are answered, for opts.CommandDuration. Floor: as many
// clients publishing a create event's bytes to a stream configured like
// KEYD_EVENTS on the same server, with the same headers keyd's append sends
// (Nats-Msg-Id, Nats-Expected-Stream, Nats-Expected-Last-Subject-Sequence 0
// on a fresh subject each, Keyd-Event-Type), waiting for each ack.
func runCommandThroughput(ctx context.Context, r *runner) (Result, error) {
	if err := r.resetDB(ctx); err != nil {
		return Result{}, err
	}
	w, err := r.newWorld(ctx, "commands")
	if err != nil {
		return Result{}, err
	}
	defer w.close()
	r.phase("starting keyd")
	k, err := r.startKeyd(ctx, w)
	if err != nil {
		return Result{}, err
	}
	clients := r.opts.CommandClients
	conns := make([]*nats.Conn, clients)
	for c := range conns {
		if conns[c], err = w.connect(fmt.Sprintf("keyd bench client %d", c+1)); err != nil {
			return Result{}, err
		}
	}
	if err := definePermission(ctx, conns[0]); err != nil {
		return Result{}, err
	}
	payload, _ := json.Marshal(map[string]any{"name": "bench key", "permissions": []string{benchPermission}})
	warm := r.opts.CommandDuration / 5
	creates, err := r.closedLoop(ctx, "create over NATS", "creates/s", clients, warm, r.opts.CommandDuration, func(c int) func(int) error {
		nc := conns[c]
		subject := fmt.Sprintf("keyd.cmd.keys.bench-org-%d.create", c%16)
		return func(i int) error {
			m, err := nc.RequestWithContext(ctx, subject, payload)
			if err != nil {
				return err
			}
			if bytes.HasPrefix(m.Data, []byte(`{"error"`)) || i%256 == 0 {
				var reply domain.CreateKeyResult
				if err := decodeReply(subject, m.Data, &reply); err != nil {
					return err
				}
				if reply.Secret == "" || reply.Sequence == 0 {
					return fmt.Errorf("%s: a create reply without a secret or sequence", subject)
				}
			}
			return nil
		}
	})
	if err != nil {
		return Result{}, err
	}

	// The floor: a real create event's bytes, appended the way keyd does,
	// once keyd has projected and applied the creates (the floor must not
	// share the machine with that work).
	stream, err := w.js.Stream(ctx, domain.StreamName)
	if err != nil {
		return Result{}, err
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return Result{}, err
	}
	r.phase("waiting for keyd to project the creates")
	if err := r.waitProjected(ctx, info.State.LastSeq); err != nil {
		return Result{}, err
	}
	if err := k.Verifier.WaitApplied(ctx, info.State.LastSeq); err != nil {
		return Result{}, err
	}
	last, err := stream.GetLastMsgForSubject(ctx, "keyd.events.keys.>")
	if err != nil {
		return Result{}, err
	}
	event := last.Data
	cfg := eventstore.StreamConfig(1)
	cfg.Name, cfg.Subjects, cfg.Description = "BENCH_RAW", []string{"bench.raw.>"}, "keyd bench: raw publish floor"
	if _, err := w.js.CreateStream(ctx, cfg); err != nil {
		return Result{}, err
	}
	raw, err := r.closedLoop(ctx, "raw JetStream publish", "publishes/s", clients, warm, r.opts.CommandDuration, func(c int) func(int) error {
		js, err := jetstream.New(conns[c])
		if err != nil {
			return func(int) error { return err }
		}
		prefix := "bench.raw." + strconv.Itoa(c) + "."
		return func(i int) error {
			subject := prefix + strconv.Itoa(i)
			m := &nats.Msg{Subject: subject, Data: event, Header: nats.Header{}}
			m.Header.Set(eventstore.HeaderEventType, domain.EventKeyCreated)
			_, err := js.PublishMsg(ctx, m,
				jetstream.WithMsgID(subject),
				jetstream.WithExpectStream(cfg.Name),
				jetstream.WithExpectLastSequencePerSubject(0),
				jetstream.WithRetryAttempts(0))
			return err
		}
	})
	if err != nil {
		return Result{}, err
	}
	res := Result{
		Name: "command_throughput", Value: round(creates.rps, 0), Unit: "creates/s",
		Baseline: Baseline{Name: "raw JetStream publishes, expected-sequence 0", Value: round(raw.rps, 0)},
		Better:   "higher",
		Goal:     "ratio ≥ 0.5",
		Params: map[string]any{
			"clients":       clients,
			"duration_s":    r.opts.CommandDuration.Seconds(),
			"creates":       creates.n,
			"p50_ms":        ms(creates.lat.pct(0.50)),
			"p99_ms":        ms(creates.lat.pct(0.99)),
			"floor_p50_ms":  ms(raw.lat.pct(0.50)),
			"floor_p99_ms":  ms(raw.lat.pct(0.99)),
			"event_bytes":   len(event),
			"keyd_includes": "request/reply, decoding, grants checked against the in-memory catalog, secret and digest, signed append, the wait for the local verifier to accept the key (read-your-create), reply; the same process also projects into Postgres and applies to its verifier, each checking every event's signature",
		},
	}
	res.Met = creates.rps >= 0.5*raw.rps
	return res, nil
}
