package gateway

import (
	"bytes"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// syncBuffer is a bytes.Buffer safe for the writer goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// blockingWriter blocks every Write until release is closed.
type blockingWriter struct {
	started chan struct{} // receives once per Write that began
	release chan struct{}
	out     syncBuffer
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	select {
	case w.started <- struct{}{}:
	default:
	}
	<-w.release
	return w.out.Write(p)
}

var timeField = regexp.MustCompile(`("time":"[^"]*"|time=\S+)`)

// logSome logs the same events through log, with attributes from With and a group.
func logSome(log *slog.Logger) {
	log.Info(evReady, "ports", []uint16{21}, "queue", 2121)
	s := log.With("client", "192.0.2.10:40000", "server", "198.51.100.20:21")
	s.Warn(evRejected, "reason", "bounce", "n", 3)
	s.WithGroup("g").Info(evNote, "k", "v")
	log.Info(evShutdown)
}

// TestAsyncFormat: the asynchronous logger writes exactly what the synchronous one writes.
func TestAsyncFormat(t *testing.T) {
	for _, format := range []string{"json", "text"} {
		t.Run(format, func(t *testing.T) {
			var want bytes.Buffer
			logSome(NewLogger(&want, format))
			var got syncBuffer
			log, q := NewAsyncLogger(&got, format, 0)
			logSome(log)
			q.Close()
			norm := func(s string) string { return timeField.ReplaceAllString(s, "TIME") }
			if diff := cmp.Diff(norm(want.String()), norm(got.String())); diff != "" {
				t.Errorf("async output differs (-sync +async):\n%s", diff)
			}
			if format == "json" && !strings.Contains(got.String(), `"event":"shutdown"`) {
				t.Errorf("no shutdown event under \"event\":\n%s", got.String())
			}
		})
	}
}

// TestAsyncOrder: records from one goroutine come out in the order they were logged, and
// Close writes every queued one.
func TestAsyncOrder(t *testing.T) {
	var out syncBuffer
	const n = 3000
	log, q := NewAsyncLogger(&out, "json", n)
	for i := range n {
		log.Info(evNote, "i", i)
	}
	q.Close()
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != n {
		t.Fatalf("wrote %d lines, want %d", len(lines), n)
	}
	for i, l := range lines {
		if want := fmt.Sprintf(`"i":%d}`, i); !strings.HasSuffix(l, want) {
			t.Fatalf("line %d = %s, want it to end with %s", i, l, want)
		}
	}
	if d := q.Dropped(); d != 0 {
		t.Errorf("Dropped = %d, want 0", d)
	}
}

// TestAsyncDropsWhenBlocked: with the writer stuck, logging never blocks; what does not fit
// the queue is dropped and counted, and once the writer moves on Close writes the rest.
func TestAsyncDropsWhenBlocked(t *testing.T) {
	w := &blockingWriter{started: make(chan struct{}, 1), release: make(chan struct{})}
	const size = 8
	log, q := NewAsyncLogger(w, "json", size)
	log.Info(evNote, "i", 0)
	<-w.started // the writer holds record 0 and is blocked in Write
	const extra = 20
	for i := 1; i <= size+extra; i++ {
		log.Info(evNote, "i", i) // returns although nothing is written
	}
	if got := q.Dropped(); got != extra {
		t.Errorf("Dropped = %d, want %d", got, extra)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(q.Collector())
	if got, err := testutil.GatherAndCount(reg, mLogDropped); err != nil || got != 1 {
		t.Errorf("%s: %d series, err %v", mLogDropped, got, err)
	}
	close(w.release)
	q.Close()
	lines := strings.Split(strings.TrimSuffix(w.out.String(), "\n"), "\n")
	if len(lines) != size+1 {
		t.Fatalf("wrote %d lines, want %d (the blocked one and a full queue)", len(lines), size+1)
	}
	for i, l := range lines {
		if want := fmt.Sprintf(`"i":%d}`, i); !strings.HasSuffix(l, want) {
			t.Errorf("line %d = %s, want it to end with %s", i, l, want)
		}
	}
}

// TestAsyncAfterClose: a record logged after Close is written, synchronously; Close twice is
// fine.
func TestAsyncAfterClose(t *testing.T) {
	var out syncBuffer
	log, q := NewAsyncLogger(&out, "json", 4)
	log.Info(evShutdown)
	q.Close()
	log.Info(evError, "phase", "run")
	q.Close()
	if got := strings.Count(out.String(), "\n"); got != 2 {
		t.Errorf("wrote %d lines, want 2:\n%s", got, out.String())
	}
}

// TestAsyncConcurrent logs from several goroutines while the writer writes; run with -race.
func TestAsyncConcurrent(t *testing.T) {
	var out syncBuffer
	log, q := NewAsyncLogger(&out, "json", 64)
	var wg sync.WaitGroup
	const goroutines, each = 8, 500
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := log.With("g", g)
			for i := range each {
				l.Info(evNote, "i", i)
			}
		}()
	}
	wg.Wait()
	q.Close()
	written := uint64(strings.Count(out.String(), "\n"))
	if written+q.Dropped() != goroutines*each {
		t.Errorf("written %d + dropped %d != logged %d", written, q.Dropped(), goroutines*each)
	}
	for _, l := range strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n") {
		if !strings.HasPrefix(l, `{"time":`) || !strings.HasSuffix(l, "}") {
			t.Fatalf("torn line %q", l)
		}
	}
}

// BenchmarkLog compares one event through the synchronous logger and the asynchronous one
// (both writing to a discarding writer).
func BenchmarkLog(b *testing.B) {
	b.Run("sync", func(b *testing.B) {
		benchLog(b, NewLogger(discard{}, "json"))
	})
	b.Run("async", func(b *testing.B) {
		log, q := NewAsyncLogger(discard{}, "json", 0)
		defer q.Close()
		benchLog(b, log)
		b.ReportMetric(float64(q.Dropped())/float64(b.N), "dropped/op")
	})
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

func benchLog(b *testing.B, log *slog.Logger) {
	s := log.With("client", "192.0.2.10:40000", "server", "198.51.100.20:21")
	b.ReportAllocs()
	for range b.N {
		s.Info(evPinholeOpen, "from", "198.51.100.20", "to", "198.51.100.1:50000", "nat_to", "192.0.2.10:50000")
	}
}
