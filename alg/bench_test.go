package alg

import "testing"

// BenchmarkFeed measures Feed per segment kind on a long-lived session whose server has
// greeted. Each iteration sends the segment(s) at the next sequence numbers, so nothing is a
// duplicate. The nocmd sessions see no PORT/EPRT/227/229, so they stay unproven and every
// client line has its verb checked (the costlier case); the others are proven by their first
// iteration.
func BenchmarkFeed(b *testing.B) {
	for _, tt := range noCommandSegments {
		b.Run("nocmd/"+tt.name, func(b *testing.B) {
			s := greetedSession(nil)
			p := []byte(tt.text)
			out := make([]Decision, 0, 4)
			seq := uint32(1)
			if tt.dir == FromServer {
				seq += uint32(len(greeting))
			}
			b.ReportAllocs()
			b.SetBytes(int64(len(p)))
			for b.Loop() {
				out = s.Feed(Segment{Dir: tt.dir, Seq: seq, Payload: p}, out[:0])
				seq += uint32(len(p))
			}
		})
	}
	b.Run("PORT", func(b *testing.B) {
		s := greetedSession(&Config{MaxPending: 1 << 30})
		p := []byte("PORT 192,0,2,10,194,149\r\n")
		out := make([]Decision, 0, 4)
		seq := uint32(1)
		b.ReportAllocs()
		for b.Loop() {
			out = s.Feed(Segment{Dir: FromClient, Seq: seq, Payload: p}, out[:0])
			seq += uint32(len(p))
		}
		if len(out) != 1 || out[0].Action != ActOpen {
			b.Fatalf("decisions %+v", out)
		}
	})
	b.Run("EPRT", func(b *testing.B) {
		s := greetedSession(&Config{MaxPending: 1 << 30})
		p := []byte("EPRT |1|192.0.2.10|37295|\r\n")
		out := make([]Decision, 0, 4)
		seq := uint32(1)
		b.ReportAllocs()
		for b.Loop() {
			out = s.Feed(Segment{Dir: FromClient, Seq: seq, Payload: p}, out[:0])
			seq += uint32(len(p))
		}
		if len(out) != 1 || out[0].Action != ActOpen {
			b.Fatalf("decisions %+v", out)
		}
	})
	b.Run("227", func(b *testing.B) {
		// PASV then its 227 each iteration; the 227 segment is the one that matters.
		s := greetedSession(&Config{MaxPending: 1 << 30})
		pasv := []byte("PASV\r\n")
		r := []byte("227 Entering Passive Mode (198,51,100,20,156,64).\r\n")
		out := make([]Decision, 0, 4)
		cseq, sseq := uint32(1), uint32(1+len(greeting))
		b.ReportAllocs()
		for b.Loop() {
			s.Feed(Segment{Dir: FromClient, Seq: cseq, Payload: pasv}, nil)
			cseq += uint32(len(pasv))
			out = s.Feed(Segment{Dir: FromServer, Seq: sseq, Payload: r}, out[:0])
			sseq += uint32(len(r))
		}
		if len(out) != 1 || out[0].Action != ActOpen {
			b.Fatalf("decisions %+v", out)
		}
	})
	b.Run("split_PORT", func(b *testing.B) {
		s := greetedSession(&Config{MaxPending: 1 << 30})
		p := []byte("PORT 192,0,2,10,194,149\r\n")
		out := make([]Decision, 0, 4)
		seq := uint32(1)
		b.ReportAllocs()
		for b.Loop() {
			out = s.Feed(Segment{Dir: FromClient, Seq: seq, Payload: p[:9]}, out[:0])
			out = s.Feed(Segment{Dir: FromClient, Seq: seq + 9, Payload: p[9:]}, out)
			seq += uint32(len(p))
		}
		if len(out) != 1 || out[0].Action != ActOpen {
			b.Fatalf("decisions %+v", out)
		}
	})
	b.Run("reordered_PORT", func(b *testing.B) {
		s := greetedSession(&Config{MaxPending: 1 << 30})
		p := []byte("PORT 192,0,2,10,194,149\r\n")
		out := make([]Decision, 0, 4)
		seq := uint32(1)
		b.ReportAllocs()
		for b.Loop() {
			out = s.Feed(Segment{Dir: FromClient, Seq: seq + 9, Payload: p[9:]}, out[:0])
			out = s.Feed(Segment{Dir: FromClient, Seq: seq, Payload: p[:9]}, out)
			seq += uint32(len(p))
		}
		if len(out) != 1 || out[0].Action != ActOpen {
			b.Fatalf("decisions %+v", out)
		}
	})
}
