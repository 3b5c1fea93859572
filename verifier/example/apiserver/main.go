// Command apiserver is a runnable example of keyd's embeddable verifier: an
// API server that verifies keys in-process (no network hop per request) and
// lets only keys holding "posts:write" create posts.
//
//	KEYD_VERIFIER_CREDENTIAL=$(keyd verifier-credential) go run ./verifier/example/apiserver \
//	    -nats nats://127.0.0.1:4222 \
//	    -db 'postgres://postgres@127.0.0.1:5432/keyd?sslmode=disable'
//	curl -X POST -H "Authorization: Bearer sk_…" http://127.0.0.1:8090/posts
//
// Use the NATS URL keyd dev printed. The verifier credential (kvc_…) holds
// only the digest key and keyd's public event key: this server can check
// keys and events but cannot sign events or widget sessions, so it never
// needs KEYD_SECRET. `keyd verifier-credential` prints it (from KEYD_SECRET,
// or from keyd dev's data directory).
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"time"

	"github.com/keyd-dev/keyd/verifier"
)

func main() {
	natsURL := flag.String("nats", "nats://127.0.0.1:4222", "keyd's NATS URL")
	dbURL := flag.String("db", "postgres://postgres@127.0.0.1:5432/keyd?sslmode=disable", "keyd's Postgres URL")
	addr := flag.String("addr", "127.0.0.1:8090", "listen address")
	flag.Parse()

	credential := os.Getenv("KEYD_VERIFIER_CREDENTIAL")
	if credential == "" {
		log.Fatal("set KEYD_VERIFIER_CREDENTIAL (keyd verifier-credential prints it)")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	bootCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	v, err := verifier.Connect(bootCtx, *natsURL, *dbURL, credential, verifier.WithMaxStaleness(30*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	defer v.Close()

	mux := http.NewServeMux()
	mux.Handle("POST /posts", v.Middleware("posts:write")(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key, _ := verifier.FromContext(r.Context())
		fmt.Fprintf(w, "post created for organization %s with key %s (%s)\n", key.OrgID, key.ID, key.Name)
	})))
	srv := &http.Server{Addr: *addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { <-ctx.Done(); _ = srv.Shutdown(context.Background()) }()
	log.Printf("listening on http://%s (verifier at sequence %d)", *addr, v.Applied())
	if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		log.Fatal(err)
	}
}
