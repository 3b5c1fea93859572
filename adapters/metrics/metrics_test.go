package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestHandlerServesCommandsAndGauges(t *testing.T) {
	t.Parallel()
	m := New()
	m.ObserveCommand("create", "ok", 3*time.Millisecond)
	m.ObserveCommand("create", "invalid_argument", time.Millisecond)
	m.RefuseCommand(RefusedReplySubject)
	m.RefuseCommand(RefusedReplySubject)
	var none *Metrics
	none.RefuseCommand(RefusedNoReply) // a nil Metrics counts nothing, and does not panic
	m.Gauge("keyd_test_lag_events", "test gauge", func() float64 { return 42 })
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		`keyd_commands_total{outcome="ok",type="create"} 1`,
		`keyd_commands_total{outcome="invalid_argument",type="create"} 1`,
		`keyd_command_duration_seconds_count{type="create"} 2`,
		`keyd_test_lag_events 42`,
		`keyd_commands_refused_total{reason="reply_subject"} 2`,
		`keyd_commands_refused_total{reason="no_reply"} 0`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics output lacks %q", want)
		}
	}
}
