package alg

import (
	"net/netip"
	"testing"
)

func TestNext(t *testing.T) {
	s := NewSession(netip.MustParseAddrPort("192.0.2.10:40000"), netip.MustParseAddrPort("198.51.100.20:21"), nil)
	if _, ok := s.Next(FromClient); ok {
		t.Fatal("Next before any segment: ok")
	}
	s.Feed(Segment{Dir: FromClient, Seq: 99, SYN: true}, nil)
	if seq, ok := s.Next(FromClient); !ok || seq != 100 {
		t.Fatalf("Next after SYN = %d, %v; want 100", seq, ok)
	}
	s.Feed(Segment{Dir: FromClient, Seq: 100, Payload: []byte("USER a\r\n")}, nil)
	if seq, _ := s.Next(FromClient); seq != 108 {
		t.Errorf("Next after 8 bytes = %d, want 108", seq)
	}
	if _, ok := s.Next(FromServer); ok {
		t.Error("Next of an unseen direction: ok")
	}
}

// TestRefusedPortClosesItsPinhole: a PORT that opened a pinhole and is answered 4xx/5xx gives
// ActRefused; not when a later PORT (whose pinhole replaced it) is still outstanding, nor for
// a PORT that opened nothing.
func TestRefusedPortClosesItsPinhole(t *testing.T) {
	client := netip.MustParseAddrPort("192.0.2.10:40000")
	server := netip.MustParseAddrPort("198.51.100.20:21")
	for _, tc := range []struct {
		name    string
		lines   []string // client lines start with >, server lines with <
		refused int
	}{
		{"refused", []string{">PORT 192,0,2,10,4,1", "<500 Illegal PORT command."}, 1},
		{"accepted", []string{">PORT 192,0,2,10,4,1", "<200 PORT ok."}, 0},
		{"eprt refused", []string{">EPRT |1|192.0.2.10|1025|", "<522 Network protocol not supported."}, 1},
		{"pipelined, newer pending", []string{">PORT 192,0,2,10,4,1", ">PORT 192,0,2,10,4,2", "<500 no.", "<200 ok."}, 0},
		{"pipelined, newer refused", []string{">PORT 192,0,2,10,4,1", ">PORT 192,0,2,10,4,2", "<200 ok.", "<500 no."}, 1},
		{"bounce refused opened nothing", []string{">PORT 203,0,113,5,4,1", "<500 Illegal PORT command."}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewSession(client, server, nil)
			cseq, sseq := uint32(100), uint32(500)
			s.Feed(Segment{Dir: FromClient, Seq: cseq - 1, SYN: true}, nil)
			s.Feed(Segment{Dir: FromServer, Seq: sseq - 1, SYN: true}, nil)
			feed := func(d Dir, line string) []Decision {
				b := []byte(line + "\r\n")
				seq := &cseq
				if d == FromServer {
					seq = &sseq
				}
				out := s.Feed(Segment{Dir: d, Seq: *seq, Payload: b}, nil)
				*seq += uint32(len(b))
				return out
			}
			feed(FromServer, "220 ready")
			n := 0
			for _, l := range tc.lines {
				d := FromClient
				if l[0] == '<' {
					d = FromServer
				}
				for _, dec := range feed(d, l[1:]) {
					if dec.Action == ActRefused {
						n++
					}
				}
			}
			if n != tc.refused {
				t.Errorf("%d ActRefused, want %d", n, tc.refused)
			}
		})
	}
}
