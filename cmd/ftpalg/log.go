package main

import (
	"io"
	"log/slog"
	"sync"
	"time"
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

// newLogger returns a logger writing one event per line to w. The message is the event name,
// emitted under the key "event" instead of "msg".
func newLogger(w io.Writer, format string) *slog.Logger {
	opts := &slog.HandlerOptions{
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.MessageKey {
				a.Key = "event"
			}
			return a
		},
	}
	w = &lockedWriter{w: w}
	if format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
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
