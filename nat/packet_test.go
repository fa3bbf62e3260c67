package nat

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestDecode(t *testing.T) {
	base4 := spec{src: cli4, dst: srv4, seq: 1000, ack: 2000, flags: FlagACK | FlagPSH, payload: []byte("NOOP\r\n")}
	base6 := spec{src: cli6, dst: srv6, seq: 0xfffffff0, ack: 7, flags: FlagACK, payload: []byte("EPSV\r\n")}
	type result struct {
		Version    int
		Src, Dst   netip.AddrPort
		Seq, Ack   uint32
		Flags      uint8
		Payload    string
		SACK       [][2]uint32
		PayloadSeq uint32
	}
	tests := []struct {
		name string
		s    spec
		want result
	}{
		{"ipv4", base4, result{4, cli4, srv4, 1000, 2000, FlagACK | FlagPSH, "NOOP\r\n", nil, 1000}},
		{"ipv4 options timestamps sack", base4.with(func(s *spec) {
			s.ipOpts, s.tsval, s.sack = true, 99, [][2]uint32{{10, 20}, {30, 40}}
		}), result{4, cli4, srv4, 1000, 2000, FlagACK | FlagPSH, "NOOP\r\n", [][2]uint32{{10, 20}, {30, 40}}, 1000}},
		{"ipv4 syn", base4.with(func(s *spec) { s.flags, s.payload = FlagSYN, nil }),
			result{4, cli4, srv4, 1000, 2000, FlagSYN, "", nil, 1001}},
		{"ipv6", base6, result{6, cli6, srv6, 0xfffffff0, 7, FlagACK, "EPSV\r\n", nil, 0xfffffff0}},
		{"ipv6 ext headers sack", base6.with(func(s *spec) {
			s.hbh, s.routing, s.destOpts, s.sack = true, true, true, [][2]uint32{{1, 2}, {3, 4}, {5, 6}}
		}), result{6, cli6, srv6, 0xfffffff0, 7, FlagACK, "EPSV\r\n", [][2]uint32{{1, 2}, {3, 4}, {5, 6}}, 0xfffffff0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := build(t, tt.s)
			var p Packet
			if err := p.Decode(b); err != nil {
				t.Fatalf("Decode: %v", err)
			}
			got := result{p.Version(), p.Src(), p.Dst(), p.Seq(), p.Ack(), p.Flags(), string(p.Payload()), p.SACKBlocks(nil), p.PayloadSeq()}
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
				t.Errorf("decoded (-want +got):\n%s", diff)
			}
			if len(p.Bytes()) != len(b) || &p.Bytes()[0] != &b[0] {
				t.Errorf("Bytes is not a view of the input")
			}
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	v4 := build(t, spec{src: cli4, dst: srv4, seq: 1, ack: 1, flags: FlagACK, payload: []byte("USER x\r\n")})
	v6 := build(t, spec{src: cli6, dst: srv6, seq: 1, ack: 1, flags: FlagACK, payload: []byte("USER x\r\n"), hbh: true})
	mut := func(b []byte, f func([]byte)) []byte {
		c := append([]byte(nil), b...)
		f(c)
		return c
	}
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrTruncated},
		{"version 5", mut(v4, func(b []byte) { b[0] = 0x55 }), ErrNotIP},
		{"ipv4 short", v4[:19], ErrTruncated},
		{"ipv4 ihl 4", mut(v4, func(b []byte) { b[0] = 0x44 }), ErrBadHeader},
		{"ipv4 total below ihl", mut(v4, func(b []byte) { b[2], b[3] = 0, 10 }), ErrBadHeader},
		{"ipv4 total beyond data", v4[:len(v4)-1], ErrTruncated},
		{"ipv4 more fragments", mut(v4, func(b []byte) { b[6] |= 0x20 }), ErrFragment},
		{"ipv4 fragment offset", mut(v4, func(b []byte) { b[7] = 1 }), ErrFragment},
		{"ipv4 udp", mut(v4, func(b []byte) { b[9] = 17 }), ErrNotTCP},
		{"tcp short", mut(v4[:30], func(b []byte) { b[2], b[3] = 0, 30 }), ErrTruncated},
		{"tcp offset 4", mut(v4, func(b []byte) { b[20+12] = 0x40 }), ErrBadHeader},
		{"tcp offset beyond", mut(v4, func(b []byte) { b[20+12] = 0xf0 }), ErrBadHeader},
		{"ipv6 short", v6[:39], ErrTruncated},
		{"ipv6 jumbo", mut(v6, func(b []byte) { b[4], b[5] = 0, 0 }), ErrUnsupported},
		{"ipv6 length beyond", v6[:len(v6)-1], ErrBadHeader},
		{"ipv6 fragment", mut(v6, func(b []byte) { b[40] = protoFragment }), ErrFragment},
		{"ipv6 udp", mut(v6, func(b []byte) { b[6] = protoUDP }), ErrNotTCP},
		{"ipv6 unknown", mut(v6, func(b []byte) { b[6] = 253 }), ErrUnsupported},
		{"ipv6 hop-by-hop twice", mut(v6, func(b []byte) { b[40] = protoHopByHop }), ErrBadHeader},
		{"ipv6 ext beyond", mut(v6, func(b []byte) { b[41] = 200 }), ErrTruncated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p Packet
			err := p.Decode(tt.b)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Decode = %v, want %v", err, tt.want)
			}
			if p.Bytes() != nil || p.Version() != 0 {
				t.Errorf("failed Decode left state behind")
			}
		})
	}
}

// TestDecodeTrailing: bytes after the IP length are not part of the packet.
func TestDecodeTrailing(t *testing.T) {
	b := build(t, spec{src: cli4, dst: srv4, seq: 1, ack: 1, flags: FlagACK, payload: []byte("PWD\r\n")})
	n := len(b)
	b = append(b, 0, 0, 0, 0)
	p := mustDecode(t, b)
	if diff := cmp.Diff(n, len(p.Bytes())); diff != "" {
		t.Errorf("Bytes length (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff("PWD\r\n", string(p.Payload())); diff != "" {
		t.Errorf("Payload (-want +got):\n%s", diff)
	}
}

// TestDecodeSACKOptions: malformed option lists stop parsing like the Linux receiver does.
func TestDecodeSACKOptions(t *testing.T) {
	mk := func(opts ...byte) []byte {
		for len(opts)%4 != 0 {
			opts = append(opts, 0)
		}
		b := build(t, spec{src: cli4, dst: srv4, seq: 1, ack: 1, flags: FlagACK})
		b = append(b[:40:40], opts...)
		b[20+12] = byte((20+len(opts))/4) << 4
		b[2], b[3] = 0, byte(len(b))
		return b
	}
	blk := []byte{0, 0, 0, 1, 0, 0, 0, 2}
	tests := []struct {
		name string
		b    []byte
		want [][2]uint32
	}{
		{"one block", mk(append([]byte{1, 1, 5, 10}, blk...)...), [][2]uint32{{1, 2}}},
		{"bad sack length ignored", mk(append([]byte{1, 1, 5, 9}, blk...)...), nil},
		{"after eol ignored", mk(append([]byte{0, 1, 5, 10}, blk...)...), nil},
		{"zero length stops", mk(append([]byte{8, 0, 5, 10}, blk...)...), nil},
		{"overlong stops", mk(5, 40), nil},
		{"after mss", mk(append([]byte{2, 4, 5, 180, 5, 10}, blk...)...), [][2]uint32{{1, 2}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustDecode(t, tt.b)
			if diff := cmp.Diff(tt.want, p.SACKBlocks(nil)); diff != "" {
				t.Errorf("SACK blocks (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDecodeAllocs(t *testing.T) {
	b := build(t, spec{src: cli6, dst: srv6, seq: 1, ack: 1, flags: FlagACK, hbh: true, tsval: 5, sack: [][2]uint32{{1, 2}}, payload: []byte("PASV\r\n")})
	var p Packet
	if n := testing.AllocsPerRun(100, func() { _ = p.Decode(b) }); n != 0 {
		t.Errorf("Decode allocates %v times per packet", n)
	}
	bad := b[:30]
	if n := testing.AllocsPerRun(100, func() { _ = p.Decode(bad) }); n != 0 {
		t.Errorf("failing Decode allocates %v times per packet", n)
	}
}
