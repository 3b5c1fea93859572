// Command apiserver is a runnable example of keyd's embeddable verifier: an
// API server that verifies keys in-process (no network hop per request) and
// lets only keys holding "posts:write" create posts.
//
//	KEYD_SECRET=… go run ./verifier/example/apiserver \
//	    -nats nats://127.0.0.1:4222 \
//	    -db 'postgres://postgres@127.0.0.1:5432/keyd?sslmode=disable'
//	curl -X POST -H "Authorization: Bearer sk_…" http://127.0.0.1:8090/posts
//
// Use the NATS URL keyd dev printed and the deployment secret it keeps in
// .keyd/secret (or your deployment's KEYD_SECRET).
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/keyd-dev/keyd/verifier"
)

func main() {
	natsURL := flag.String("nats", "nats://127.0.0.1:4222", "keyd's NATS URL")
	dbURL := flag.String("db", "postgres://postgres@127.0.0.1:5432/keyd?sslmode=disable", "keyd's Postgres URL")
	secretFile := flag.String("secret-file", ".keyd/secret", "file holding the deployment secret, if KEYD_SECRET is unset")
	addr := flag.String("addr", "127.0.0.1:8090", "listen address")
	flag.Parse()

	secret := os.Getenv("KEYD_SECRET")
	if secret == "" {
		b, err := os.ReadFile(*secretFile)
		if err != nil {
			log.Fatalf("set KEYD_SECRET or -secret-file: %v", err)
		}
		secret = strings.TrimSpace(string(b))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	bootCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	v, err := verifier.Connect(bootCtx, *natsURL, *dbURL, []byte(secret), verifier.WithMaxStaleness(30*time.Second))
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
