package gateway

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ftpalg/ftpalg/conntrack"
	"github.com/ftpalg/ftpalg/conntrack/queue"
)

// benchWorker is a worker on the fake kernel and a no-op queue, logging nowhere and without
// restart persistence (the daemon writes a state file per rewrite; see BENCHMARKS.md), with
// one SNAT'd control session past its handshake and greeting.
type benchWorker struct {
	tb         testing.TB
	w          *worker
	k          *fakeKernel
	id         uint32
	now        time.Time
	cseq, sseq uint32
}

func newBenchWorker(tb testing.TB) *benchWorker {
	cfg := &Config{Ports: []uint16{21}, Queues: 1, PinholeTimeout: 30 * time.Second}
	k := &fakeKernel{flows: map[conntrack.Tuple]conntrack.Flow{{Src: client, Dst: server}: snatFlow}}
	log := NewLogger(io.Discard, "json")
	m := newMetrics("test")
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(cancel)
	w := newWorker(0, cfg, k, nopQueue{}, newPinholes(ctx, k, log, m, cfg.PinholeTimeout), log, m)
	bw := &benchWorker{tb: tb, w: w, k: k, now: time.Unix(1e9, 0), cseq: clientISN, sseq: serverISN}
	bw.send(tcpPacket(tb, client, server, bw.cseq, 0, true, false, ""))
	bw.send(tcpPacket(tb, server, client, bw.sseq, bw.cseq+1, true, false, ""))
	bw.cseq++
	bw.sseq++
	bw.send(tcpPacket(tb, client, server, bw.cseq, bw.sseq, false, false, ""))
	bw.fromServer("220 ready\r\n")
	return bw
}

func (b *benchWorker) send(p []byte) {
	b.id++
	b.w.handle(queue.Packet{ID: b.id, Payload: p}, b.now)
}

func (b *benchWorker) fromServer(text string) {
	b.send(tcpPacket(b.tb, server, client, b.sseq, b.cseq, false, false, text))
	b.sseq += uint32(len(text))
}

func (b *benchWorker) fromClient(text string) {
	b.send(tcpPacket(b.tb, client, server, b.cseq, b.sseq, false, false, text))
	b.cseq += uint32(len(text))
}

// BenchmarkHandle measures the per-packet path (worker.handle) by packet kind:
//
//   - no-command: a server reply line that is no 227/229, on a session without a rewrite;
//   - shift-only: a server reply on a session whose client stream grew (a PORT was
//     rewritten): its ack is mapped back, the checksum updated;
//   - rewrite: a PORT from the client behind SNAT: expectation, text rewritten and recorded;
//   - pinhole-decision: a 227 after a PASV, no rewrite needed: expectation only.
//
// The same packet is handed over again for no-command and shift-only (a retransmission takes
// the same path); rewrite and pinhole-decision build the next packet of the stream with the
// timer stopped.
func BenchmarkHandle(b *testing.B) {
	b.Run("no-command", func(b *testing.B) {
		bw := newBenchWorker(b)
		p := queue.Packet{ID: 1, Payload: tcpPacket(b, server, client, bw.sseq, bw.cseq, false, false, "150 Opening BINARY mode data connection\r\n")}
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			bw.w.handle(p, bw.now)
		}
	})
	b.Run("shift-only", func(b *testing.B) {
		bw := newBenchWorker(b)
		bw.fromClient("PORT 192,0,2,10,4,1\r\n") // grows by 2 bytes: later acks are shifted
		p := queue.Packet{ID: 1, Payload: tcpPacket(b, server, client, bw.sseq, bw.cseq+2, false, false, "200 PORT command successful\r\n")}
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			bw.w.handle(p, bw.now)
		}
	})
	b.Run("rewrite", func(b *testing.B) {
		bw := newBenchWorker(b)
		const cmd = "PORT 192,0,2,10,4,1\r\n"
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			b.StopTimer()
			p := queue.Packet{ID: 1, Payload: tcpPacket(b, client, server, bw.cseq, bw.sseq, false, false, cmd)}
			bw.cseq += uint32(len(cmd))
			bw.k.expects = bw.k.expects[:0]            // the kernel keeps one per master; the fake keeps all
			bw.now = bw.now.Add(10 * time.Millisecond) // stay under the per-session pinhole rate
			b.StartTimer()
			bw.w.handle(p, bw.now)
		}
	})
	b.Run("pinhole-decision", func(b *testing.B) {
		bw := newBenchWorker(b)
		const reply = "227 Entering Passive Mode (198,51,100,20,195,80).\r\n"
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			b.StopTimer()
			bw.fromClient("PASV\r\n")
			p := queue.Packet{ID: 1, Payload: tcpPacket(b, server, client, bw.sseq, bw.cseq, false, false, reply)}
			bw.sseq += uint32(len(reply))
			bw.k.expects = bw.k.expects[:0]
			bw.now = bw.now.Add(10 * time.Millisecond) // stay under the per-session pinhole rate
			b.StartTimer()
			bw.w.handle(p, bw.now)
		}
	})
}

// TestBenchHandleOpensPinholes checks that the rewrite and pinhole-decision benchmarks measure
// what they claim: each packet opens an expectation, and the PORT is rewritten.
func TestBenchHandleOpensPinholes(t *testing.T) {
	tests := []struct {
		name     string
		run      func(bw *benchWorker)
		expects  int
		rewrites int
	}{
		{name: "rewrite", run: func(bw *benchWorker) { bw.fromClient("PORT 192,0,2,10,4,1\r\n") }, expects: 1, rewrites: 1},
		{name: "pinhole-decision", run: func(bw *benchWorker) {
			bw.fromClient("PASV\r\n")
			bw.fromServer("227 Entering Passive Mode (198,51,100,20,195,80).\r\n")
		}, expects: 1},
		{name: "no-command", run: func(bw *benchWorker) { bw.fromServer("150 Opening BINARY mode data connection\r\n") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bw := newBenchWorker(t)
			tt.run(bw)
			s := bw.w.sessions[sessKey{client, server, 0, 0}]
			if s == nil {
				t.Fatal("no session")
			}
			type counts struct{ Expects, Rewrites int }
			got := counts{len(bw.k.expects), s.rewrites}
			want := counts{tt.expects, tt.rewrites}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("counts (-want +got):\n%s", diff)
			}
		})
	}
}
