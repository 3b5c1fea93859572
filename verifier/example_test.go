package verifier_test

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"os"
	"time"

	"github.com/keyd-dev/keyd/verifier"
)

// An API server that lets only keys holding "posts:write" create posts. The
// verifier runs inside the server: verifications are in-memory lookups, and
// a key revoked in keyd is refused within milliseconds.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	v, err := verifier.Connect(ctx,
		"nats://127.0.0.1:4222",                                   // keyd's NATS
		"postgres://postgres@127.0.0.1:5432/keyd?sslmode=disable", // keyd's database
		os.Getenv("KEYD_VERIFIER_CREDENTIAL"),                     // from keyd verifier-credential: no KEYD_SECRET
		verifier.WithMaxStaleness(30*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	defer v.Close()

	mux := http.NewServeMux()
	mux.Handle("POST /posts", v.Middleware("posts:write")(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key, _ := verifier.FromContext(r.Context())
		fmt.Fprintf(w, "post created for organization %s with key %s (%s)\n", key.OrgID, key.ID, key.Name)
	})))
	log.Fatal(http.ListenAndServe(":8081", mux))
}
