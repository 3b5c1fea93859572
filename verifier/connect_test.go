package verifier

import (
	"context"
	"testing"
	"time"

	"github.com/keyd-dev/keyd/domain"
)

func TestConnect(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	k := e.create("org_1", domain.CreateKey{})
	e.project()

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	v, err := Connect(ctx, e.srv.ClientURL(), e.dsn, domain.NewVerifierCredential(testSecret).String(), WithLogger(e.log), WithMaxStaleness(5*time.Second))
	cancel() // bounds the boot only
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if !v.getBootInfo().snapshot {
		t.Error("Connect with a database did not boot from the snapshot")
	}
	r := verify(t, v, k.Secret)
	if r.Code != CodeValid {
		t.Fatalf("key: %s", r.Code)
	}
	// Still following after the boot context ended.
	seq := e.revoke("org_1", k.Key.ID)
	wctx, wcancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer wcancel()
	if err := v.WaitApplied(wctx, seq); err != nil {
		t.Fatal(err)
	}
	if r := verify(t, v, k.Secret); r.Code != CodeRevoked {
		t.Errorf("after revoke: %s", r.Code)
	}
	v.Close()
	v.Close()
	if !v.nc.IsClosed() {
		t.Error("Close left the NATS connection open")
	}

	if _, err := Connect(t.Context(), e.srv.ClientURL(), "", ""); err == nil {
		t.Error("Connect without a verifier credential: no error")
	}
}
