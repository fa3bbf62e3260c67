package nat

import "testing"

func BenchmarkDecode(b *testing.B) {
	for _, bc := range []struct {
		name string
		s    spec
	}{
		{"ipv4", spec{src: cli4, dst: srv4, seq: 1, ack: 1, flags: FlagACK, tsval: 1, payload: []byte("NOOP\r\n")}},
		{"ipv4-sack", spec{src: cli4, dst: srv4, seq: 1, ack: 1, flags: FlagACK, tsval: 1, sack: [][2]uint32{{1, 2}, {3, 4}}}},
		{"ipv6-ext", spec{src: cli6, dst: srv6, seq: 1, ack: 1, flags: FlagACK, hbh: true, destOpts: true, tsval: 1, payload: []byte("NOOP\r\n")}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			pkt := build(b, bc.s)
			var p Packet
			b.ReportAllocs()
			b.SetBytes(int64(len(pkt)))
			for b.Loop() {
				if err := p.Decode(pkt); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkApply(b *testing.B) {
	port := spec{src: cli4, dst: srv4, seq: 1000, ack: 1, flags: FlagACK | FlagPSH, tsval: 1, payload: []byte("PORT 192,0,2,10,156,64\r\n")}
	rewrite := []Edit{editOf(b, port, "192,0,2,10", "203,0,113,77")}
	// shifted returns a Conn in which the client's stream grew by 2 bytes at the PORT command.
	shifted := func(b *testing.B) *Conn {
		c := new(Conn)
		if _, _, err := c.Apply(mustDecode(b, build(b, port)), Original, rewrite, 1500, nil); err != nil {
			b.Fatal(err)
		}
		return c
	}
	later := spec{src: cli4, dst: srv4, seq: 1024, ack: 1, flags: FlagACK | FlagPSH, tsval: 2, payload: []byte("LIST\r\n")}
	ack := spec{src: srv4, dst: cli4, seq: 1, ack: 1010, flags: FlagACK, tsval: 3, sack: [][2]uint32{{1032, 1040}, {1050, 1060}}}
	for _, bc := range []struct {
		name    string
		conn    func(*testing.B) *Conn
		s       spec
		d       Dir
		edits   []Edit
		fresh   bool // a new Conn per iteration (recording edits)
		changed bool
	}{
		{"unchanged", func(*testing.B) *Conn { return new(Conn) }, later, Original, nil, false, false},
		{"shift-seq", shifted, later, Original, nil, false, true},
		{"shift-ack-sack", shifted, ack, Reply, nil, false, true},
		{"retransmit-rewritten", shifted, port, Original, nil, false, true},
		{"rewrite-grow", shifted, port, Original, rewrite, true, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			p := mustDecode(b, build(b, bc.s))
			c := bc.conn(b)
			out := make([]byte, 0, 65535)
			b.ReportAllocs()
			for b.Loop() {
				if bc.fresh {
					*c = Conn{}
				}
				_, changed, err := c.Apply(p, bc.d, bc.edits, 1500, out)
				if err != nil || changed != bc.changed {
					b.Fatalf("Apply: changed %v, err %v", changed, err)
				}
			}
		})
	}
}
