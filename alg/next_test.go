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
