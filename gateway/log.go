package gateway

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Event names: the operator-facing log contract (DESIGN.md "What operators see"). Every line
// carries one of these under the key "event".
const (
	evReady          = "ready"
	evShutdown       = "shutdown"
	evSessionOpen    = "session_open"
	evSessionClose   = "session_close"
	evRewrite        = "rewrite"
	evPinholeOpen    = "pinhole_open"
	evPinholeUsed    = "pinhole_used"
	evPinholeExpired = "pinhole_expired"
	evPinholeClosed  = "pinhole_closed"
	evRejected       = "rejected"
	evTLS            = "tls_passthrough"
	evFXP            = "fxp"
	evNote           = "note"
	evError          = "error"
)

// newLogger returns a logger writing one event per line to w, synchronously: the caller
// formats and writes. The message is the event name, emitted under the key "event" instead
// of "msg". Tests use it to read the lines right after the call; the daemon uses
// newAsyncLogger.
func NewLogger(w io.Writer, format string) *slog.Logger {
	return slog.New(newHandler(&lockedWriter{w: w}, format))
}

// newHandler is the one place that defines the line format, shared by both loggers so that
// their output is byte-identical.
func newHandler(w io.Writer, format string) slog.Handler {
	opts := &slog.HandlerOptions{
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.MessageKey {
				a.Key = "event"
			}
			return a
		},
	}
	if format == "text" {
		return slog.NewTextHandler(w, opts)
	}
	return slog.NewJSONHandler(w, opts)
}

// DefaultLogQueue is the number of records the asynchronous logger holds for its writer.
const DefaultLogQueue = 4096

// mLogDropped counts the records the asynchronous logger dropped because its queue was full.
const mLogDropped = "ftpalg_log_dropped_total"

// newAsyncLogger returns a logger whose calls never block on w: a record is queued (up to
// size, DefaultLogQueue when ≤ 0) and one writer goroutine formats and writes it, in the
// order the records were logged. When the queue is full the record is dropped and counted
// (LogQueue.Dropped): the packet path must never wait for stdout (a pipe to a slow journal,
// a terminal). The line format is NewLogger's. LogQueue.Close drains the queue at shutdown;
// records logged after Close are written synchronously.
func NewAsyncLogger(w io.Writer, format string, size int) (*slog.Logger, *LogQueue) {
	if size <= 0 {
		size = DefaultLogQueue
	}
	q := &LogQueue{ch: make(chan queuedRecord, size), done: make(chan struct{})}
	go q.write()
	return slog.New(&asyncHandler{inner: newHandler(&lockedWriter{w: w}, format), q: q}), q
}

// queuedRecord is a record with the handler (attributes and groups of With) that formats it.
type queuedRecord struct {
	h slog.Handler
	r slog.Record
}

// LogQueue is the bounded queue between the loggers and the writer goroutine.
type LogQueue struct {
	ch      chan queuedRecord
	done    chan struct{} // closed when the writer has written everything
	dropped atomic.Uint64

	mu     sync.RWMutex // held for reading while queuing, for writing by Close
	closed bool
}

func (q *LogQueue) write() {
	defer close(q.done)
	for qr := range q.ch {
		qr.h.Handle(context.Background(), qr.r) // a failed write has nowhere to be reported
	}
}

// Dropped returns how many records were dropped because the queue was full.
func (q *LogQueue) Dropped() uint64 { return q.dropped.Load() }

// Close writes the records still queued and stops the writer; it returns once they are
// written (the last lines, shutdown and session_close, are not lost). Later records are
// written synchronously by the caller. Close may be called more than once.
func (q *LogQueue) Close() {
	q.mu.Lock()
	if !q.closed {
		q.closed = true
		close(q.ch)
	}
	q.mu.Unlock()
	<-q.done
}

// Collector returns the counter of dropped records, mLogDropped, for the daemon's registry.
func (q *LogQueue) Collector() prometheus.Collector {
	return prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: mLogDropped,
		Help: "Log records dropped because the log writer fell behind (queue full).",
	}, func() float64 { return float64(q.Dropped()) })
}

// asyncHandler queues records for the writer goroutine.
type asyncHandler struct {
	inner slog.Handler
	q     *LogQueue
}

func (h *asyncHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h *asyncHandler) Handle(ctx context.Context, r slog.Record) error {
	h.q.mu.RLock()
	if h.q.closed {
		h.q.mu.RUnlock()
		return h.inner.Handle(ctx, r)
	}
	select {
	case h.q.ch <- queuedRecord{h: h.inner, r: r.Clone()}: // the record outlives this call
	default:
		h.q.dropped.Add(1)
	}
	h.q.mu.RUnlock()
	return nil
}

func (h *asyncHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &asyncHandler{inner: h.inner.WithAttrs(as), q: h.q}
}

func (h *asyncHandler) WithGroup(name string) slog.Handler {
	return &asyncHandler{inner: h.inner.WithGroup(name), q: h.q}
}

// lockedWriter serialises writes so that lines from different goroutines never interleave
// (slog handlers lock per handler, but the daemon may share w with other writers).
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// gate admits at most limit events per calendar second: per-packet warnings of a worker and
// each session's rejected lines go through one, so that a flood cannot turn into a log flood
// (16 bytes, so every session can have its own).
type gate struct {
	sec     int64
	n       uint32
	dropped uint32
}

func (g *gate) allow(now time.Time, limit uint32) bool {
	if s := now.Unix(); s != g.sec {
		g.sec, g.n = s, 0
	}
	if g.n < limit {
		g.n++
		return true
	}
	g.dropped++
	return false
}

// takeDropped returns how many events were refused since the last call, and resets it.
func (g *gate) takeDropped() int {
	n := g.dropped
	g.dropped = 0
	return int(n)
}

// bucket is a token bucket: up to burst events at once, then rate per second. Pinholes use it:
// a fast client's back-to-back transfers pass, a flood is held to the steady rate.
type bucket struct {
	last   int64 // unix nanoseconds of the last refill; 0: full
	tokens float64
}

func (b *bucket) take(now time.Time, rate, burst float64) bool {
	t := now.UnixNano()
	if b.last == 0 {
		b.tokens = burst
	} else if t > b.last {
		b.tokens = min(burst, b.tokens+float64(t-b.last)*rate/1e9)
	}
	b.last = t
	if b.tokens >= 1 {
		b.tokens--
		return true
	}
	return false
}
