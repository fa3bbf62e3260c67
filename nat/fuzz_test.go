package nat

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// refChecksums verifies (or, with fix, writes) the IPv4 header and TCP checksums of a packet p
// decoded from b by a plain full computation over the pseudo-header and segment, independent of
// the incremental code in checksum.go (gopacket's summing primitive does the additions).
func refChecksums(p *Packet, fix bool) error {
	b := p.Bytes()
	if p.Version() == 4 {
		hl := int(b[0]&0x0f) * 4
		if fix {
			b[10], b[11] = 0, 0
			binary.BigEndian.PutUint16(b[10:], gopacket.FoldChecksum(gopacket.ComputeChecksum(b[:hl], 0)))
		}
		if gopacket.FoldChecksum(gopacket.ComputeChecksum(b[:hl], 0)) != 0 {
			return fmt.Errorf("ipv4 header checksum")
		}
		if int(binary.BigEndian.Uint16(b[2:])) != len(b) {
			return fmt.Errorf("ipv4 total length")
		}
	} else if int(binary.BigEndian.Uint16(b[4:]))+40 != len(b) {
		return fmt.Errorf("ipv6 payload length")
	}
	seg := b[p.tcpOff:]
	// RFC 793 / RFC 8200 §8.1 pseudo-headers (the IPv6 header's destination is used, which is
	// the final one for the packets the tests build).
	src, dst := p.Src().Addr().AsSlice(), p.Dst().Addr().AsSlice()
	pseudo := append(append([]byte(nil), src...), dst...)
	if p.Version() == 4 {
		pseudo = append(pseudo, 0, protoTCP)
		pseudo = binary.BigEndian.AppendUint16(pseudo, uint16(len(seg)))
	} else {
		pseudo = binary.BigEndian.AppendUint32(pseudo, uint32(len(seg)))
		pseudo = append(pseudo, 0, 0, 0, protoTCP)
	}
	if fix {
		seg[16], seg[17] = 0, 0
		binary.BigEndian.PutUint16(seg[16:], gopacket.FoldChecksum(gopacket.ComputeChecksum(seg, gopacket.ComputeChecksum(pseudo, 0))))
	}
	if gopacket.FoldChecksum(gopacket.ComputeChecksum(seg, gopacket.ComputeChecksum(pseudo, 0))) != 0 {
		return fmt.Errorf("tcp checksum")
	}
	return nil
}

func fuzzSeeds(tb testing.TB) map[string][]byte {
	port := []byte("PORT 192,0,2,10,156,64\r\n")
	return map[string][]byte{
		"ipv4":           build(tb, spec{src: cli4, dst: srv4, seq: 0xfffffff8, ack: 9, flags: FlagACK | FlagPSH, payload: port}),
		"ipv4-options":   build(tb, spec{src: cli4, dst: srv4, seq: 1, ack: 9, flags: FlagACK, ipOpts: true, tsval: 3, sack: [][2]uint32{{5, 9}}, payload: port}),
		"ipv4-syn":       build(tb, spec{src: cli4, dst: srv4, seq: 77, flags: FlagSYN}),
		"ipv4-fin":       build(tb, spec{src: srv4, dst: cli4, seq: 77, ack: 5, flags: FlagACK | FlagFIN, payload: []byte("221 Bye\r\n")}),
		"ipv4-rst":       build(tb, spec{src: srv4, dst: cli4, seq: 77, ack: 5, flags: FlagRST}),
		"ipv4-truncated": build(tb, spec{src: cli4, dst: srv4, seq: 1, ack: 1, flags: FlagACK, payload: port})[:30],
		"ipv4-fragment": func() []byte {
			b := build(tb, spec{src: cli4, dst: srv4, seq: 1, flags: FlagACK, payload: port})
			b[6] |= 0x20
			return b
		}(),
		"ipv6-ext":   build(tb, spec{src: cli6, dst: srv6, seq: 0xffffffff, ack: 3, flags: FlagACK, hbh: true, routing: true, destOpts: true, tsval: 1, sack: [][2]uint32{{1, 2}, {3, 4}, {5, 6}}, payload: []byte("EPRT |2|2001:db8::10|40000|\r\n")}),
		"ipv6-229":   build(tb, spec{src: srv6, dst: cli6, seq: 5, ack: 3, flags: FlagACK, payload: []byte("229 Entering Extended Passive Mode (|||50000|)\r\n")}),
		"ipv6-split": build(tb, spec{src: cli6, dst: srv6, seq: 5, ack: 3, flags: FlagACK, payload: []byte("EPRT |2|2001:d")}),
		"ipv6-fragment": func() []byte {
			b := build(tb, spec{src: cli6, dst: srv6, seq: 5, flags: FlagACK, hbh: true})
			b[40] = protoFragment
			return b
		}(),
		"ipv4-huge-number": build(tb, spec{src: cli4, dst: srv4, seq: 1, ack: 1, flags: FlagACK, payload: []byte("PORT 999,999,999,999,99999,99999999999999\r\n")}),
	}
}

// TestWriteFuzzCorpus writes the seeds as corpus files under testdata/fuzz when
// NAT_WRITE_CORPUS=1 (they are committed; the test does nothing otherwise).
func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("NAT_WRITE_CORPUS") != "1" {
		t.Skip("set NAT_WRITE_CORPUS=1 to rewrite testdata/fuzz")
	}
	write := func(target, name string, vals ...string) {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		s := "go test fuzz v1\n"
		for _, v := range vals {
			s += v + "\n"
		}
		if err := os.WriteFile(filepath.Join(dir, "seed-"+name), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	q := func(b []byte) string { return "[]byte(" + strconv.Quote(string(b)) + ")" }
	for name, b := range fuzzSeeds(t) {
		write("FuzzDecode", name, q(b))
		write("FuzzApply", name, q(b), "uint8(0)", "uint16(5)", "uint8(10)", q([]byte("203,0,113,77")), "uint8(3)")
		write("FuzzApply", name+"-shrink-reply", q(b), "uint8(1)", "uint16(0)", "uint8(7)", q([]byte("1")), "uint8(0)")
	}
}

// FuzzDecode: Decode never panics; what it accepts is a consistent view that gopacket reads
// the same way.
func FuzzDecode(f *testing.F) {
	for _, b := range fuzzSeeds(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var p Packet
		if err := p.Decode(b); err != nil {
			return
		}
		pb := p.Bytes()
		if len(pb) > len(b) || (len(pb) > 0 && &pb[0] != &b[0]) {
			t.Fatalf("Bytes is not a prefix view of the input")
		}
		pay := p.Payload()
		if len(pay) > len(pb) || (len(pay) > 0 && &pay[len(pay)-1] != &pb[len(pb)-1]) {
			t.Fatalf("Payload is not the tail of Bytes")
		}
		if p.Version() != 4 && p.Version() != 6 {
			t.Fatalf("version %d", p.Version())
		}
		first := layers.LayerTypeIPv4
		if p.Version() == 6 {
			first = layers.LayerTypeIPv6
		}
		gp := gopacket.NewPacket(pb, first, gopacket.DecodeOptions{NoCopy: true})
		if gp.ErrorLayer() != nil {
			return // gopacket is stricter about some option lists; nothing to compare
		}
		tl, ok := gp.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if !ok {
			return
		}
		if tl.Seq != p.Seq() || tl.Ack != p.Ack() || uint16(tl.SrcPort) != p.Src().Port() || uint16(tl.DstPort) != p.Dst().Port() || !bytes.Equal(tl.Payload, pay) {
			t.Fatalf("gopacket reads seq %d ack %d ports %d>%d payload %d bytes; Decode: %d %d %v>%v %d bytes",
				tl.Seq, tl.Ack, tl.SrcPort, tl.DstPort, len(tl.Payload), p.Seq(), p.Ack(), p.Src(), p.Dst(), len(pay))
		}
	})
}

// FuzzApply: on any packet (checksums made valid first), with prior edits in both directions
// around its numbers (state selects which) and a new edit (off, n, repl) in dir: Apply never
// panics; an unchanged packet is returned as is; a changed one decodes, has consistent lengths
// and valid checksums, never exceeds the limit it was given unless it did not grow, and keeps
// everything outside the TCP numbers and payload; a failed Apply records nothing.
func FuzzApply(f *testing.F) {
	for _, b := range fuzzSeeds(f) {
		f.Add(b, uint8(0), uint16(5), uint8(10), []byte("203,0,113,77"), uint8(3))
		f.Add(b, uint8(1), uint16(0), uint8(7), []byte("1"), uint8(0))
	}
	f.Fuzz(func(t *testing.T, b []byte, dir uint8, off uint16, n uint8, repl []byte, state uint8) {
		var p Packet
		if err := p.Decode(b); err != nil {
			return
		}
		in := append([]byte(nil), p.Bytes()...)
		if err := p.Decode(in); err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if err := refChecksums(&p, true); err != nil {
			t.Fatalf("fixing input checksums: %v", err)
		}
		orig := append([]byte(nil), in...)
		d := Dir(dir & 1)
		var c Conn
		// Prior state: edits before and around this packet's numbers in both directions.
		if state&1 != 0 {
			at := Seq(p.PayloadSeq()).Add(-int32(state >> 2))
			c.dir[d].edits = append(c.dir[d].edits, edit{a: at.Add(-8), b: at.Add(-3), new: []byte("abcdefgh")[:state>>5]})
			c.dir[d].end, c.dir[d].recorded = at.Add(-3), true
		}
		if state&2 != 0 {
			at := Seq(p.Ack()).Add(-int32(state >> 3))
			c.dir[d^1].base = int32(int8(state))
			c.dir[d^1].edits = append(c.dir[d^1].edits, edit{a: at.Add(-6), b: at.Add(-2), before: int32(int8(state)), new: []byte("xyz")[:state>>6]})
			c.dir[d^1].end, c.dir[d^1].recorded = at.Add(-2), true
		}
		var edits []Edit
		pay := p.Payload()
		if int(off)+int(n) <= len(pay) && n > 0 {
			edits = []Edit{{Seq: p.PayloadSeq() + uint32(off), Len: int(n), New: repl}}
		}
		maxLen := 1500
		if state&4 != 0 {
			maxLen = len(in) + 3
		}
		before := c.snapshot()
		out := make([]byte, 0, 65535)
		got, changed, err := c.Apply(&p, d, edits, maxLen, out)
		if !bytes.Equal(in, orig) {
			t.Fatalf("Apply modified its input")
		}
		if err != nil {
			if after := c.snapshot(); after != before {
				t.Fatalf("failed Apply (%v) changed the state", err)
			}
			return
		}
		if !changed {
			if len(got) != len(in) || &got[0] != &in[0] {
				t.Fatalf("unchanged packet not returned as is")
			}
			return
		}
		if len(got) > len(in) && len(got) > maxLen {
			t.Fatalf("grew to %d bytes, limit %d", len(got), maxLen)
		}
		var q Packet
		if err := q.Decode(got); err != nil {
			t.Fatalf("output does not decode: %v", err)
		}
		if err := refChecksums(&q, false); err != nil {
			t.Fatalf("output: %v", err)
		}
		if q.Src() != p.Src() || q.Dst() != p.Dst() || q.Flags() != p.Flags() || q.dataOff != p.dataOff {
			t.Fatalf("output header differs beyond the lengths")
		}
		if q.Seq() != p.Seq() || q.Ack() != p.Ack() {
			// The kernel shifts the numbers (seqadj); Apply never does.
			t.Fatalf("numbers changed: seq %d→%d ack %d→%d", p.Seq(), q.Seq(), p.Ack(), q.Ack())
		}
		if len(edits) > 0 && state&1 == 0 {
			want := append(append(append([]byte(nil), pay[:off]...), repl...), pay[int(off)+int(n):]...)
			if !bytes.Equal(q.Payload(), want) {
				t.Fatalf("payload %q, want %q", q.Payload(), want)
			}
		}
	})
}
