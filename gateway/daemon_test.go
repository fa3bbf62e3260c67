package gateway

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ftpalg/ftpalg/conntrack"
	"github.com/ftpalg/ftpalg/conntrack/queue"
)

func TestMetricsAndHealth(t *testing.T) {
	d, err := New(&Config{Ports: []uint16{21}, Queues: 1}, NewLogger(io.Discard, "json"))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(d.metricsServer().Handler)
	defer srv.Close()

	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != http.StatusServiceUnavailable {
		t.Errorf("/healthz before the daemon runs = %d, want 503", code)
	}
	d.healthy.Store(true)
	if code, body := get("/healthz"); code != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Errorf("/healthz while running = %d %q, want 200 ok", code, body)
	}
	d.m.pModified.Inc()
	d.m.rejections.WithLabelValues("bounce").Inc()
	_, body := get("/metrics")
	for _, want := range []string{
		mBuildInfo + `{version="dev"} 1`,
		mPackets + `{verdict="modified"} 1`,
		mRejections + `{reason="bounce"} 1`,
		mPacketSeconds + "_bucket",
		mSessions + " 0",
		mPinholesOpened + " 0",
		"go_goroutines",
		"process_resident_memory_bytes",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestEventRouting(t *testing.T) {
	d, _ := New(&Config{Ports: []uint16{21}, Queues: 1}, NewLogger(io.Discard, "json"))
	h := newHarness(t, nil)
	h.w.m = d.m
	h.handshake()
	h.fromServer("220 ready\r\n")
	if got := len(h.w.sessions); got != 1 {
		t.Fatalf("%d sessions, want 1", got)
	}
	// A destroyed connection that is not a control connection is filtered out before fan-out.
	other := conntrack.Flow{Orig: conntrack.Tuple{Src: client, Dst: server}}
	other.Orig.Dst = netip.AddrPortFrom(server.Addr(), 22)
	if d.isControl(other) {
		t.Errorf("a port-22 flow counts as a control connection")
	}
	// The control connection's end reaches the worker and ends the session.
	if !d.isControl(snatFlow) {
		t.Fatalf("the control flow is not recognised")
	}
	d.onEvent(t.Context(), conntrack.Event{Kind: conntrack.FlowDestroy, Flow: snatFlow}, h.pins, []*worker{h.w})
	h.w.control(<-h.w.ctl, h.now)
	if got := len(h.w.sessions); got != 0 {
		t.Errorf("%d sessions after the conntrack entry was destroyed, want 0", got)
	}
	if ev := h.events(evSessionClose); len(ev) != 1 || ev[0]["reason"] != "conntrack_gone" {
		t.Errorf("session_close events = %v, want one with reason conntrack_gone", ev)
	}
}

func testutilCount(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	return testutil.ToFloat64(c)
}

func TestQueueCollector(t *testing.T) {
	c := newQueueCollector(10, 2)
	c.read = func() (map[uint16]queue.Stats, error) {
		return map[uint16]queue.Stats{10: {Backlog: 3, Dropped: 7, UserDropped: 1}, 12: {Dropped: 99}}, nil
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	want := `
# HELP ftpalg_queue_kernel_dropped_total Control packets the kernel dropped because the queue was full (without --fail-open).
# TYPE ftpalg_queue_kernel_dropped_total counter
ftpalg_queue_kernel_dropped_total{queue="10"} 7
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), mQueueDropped); err != nil {
		t.Error(err)
	}
	if n, err := testutil.GatherAndCount(reg, mQueueBacklog); err != nil || n != 1 {
		t.Errorf("backlog series = %d, %v; want 1 (queue 11 unbound, 12 not ours)", n, err)
	}
}
