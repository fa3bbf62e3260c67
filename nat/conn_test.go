package nat

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// step is one packet through a Conn: in is built with gopacket, and the output must equal, byte
// for byte, want built with gopacket (nil want: released unchanged).
type step struct {
	name  string
	dir   Dir
	in    spec
	edits []Edit
	want  *spec
}

func editOf(tb testing.TB, s spec, old, new string) Edit {
	tb.Helper()
	i := strings.Index(string(s.payload), old)
	if i < 0 {
		tb.Fatalf("%q not in %q", old, s.payload)
	}
	return Edit{Seq: s.seq + uint32(i), Len: len(old), New: []byte(new)}
}

func runSteps(t *testing.T, steps []step) {
	t.Helper()
	var c Conn
	out := make([]byte, 0, 65535)
	for _, st := range steps {
		in := build(t, st.in)
		p := mustDecode(t, in)
		got, changed, err := c.Apply(p, st.dir, st.edits, 1500, out)
		if err != nil {
			t.Fatalf("%s: Apply: %v", st.name, err)
		}
		if st.want == nil {
			if changed || &got[0] != &in[0] {
				t.Errorf("%s: packet changed (changed=%v), want it returned as is", st.name, changed)
			}
			continue
		}
		if !changed {
			t.Errorf("%s: changed = false", st.name)
		}
		if _, err := oracle(got); err != nil {
			t.Errorf("%s: output does not verify: %v", st.name, err)
		}
		if diff := cmp.Diff(build(t, *st.want), got); diff != "" {
			t.Errorf("%s: output (-want +got):\n%s", st.name, diff)
		}
		if diff := cmp.Diff(in, p.Bytes()); diff != "" {
			t.Errorf("%s: input modified (-before +after):\n%s", st.name, diff)
		}
	}
}

func ptr(s spec) *spec { return &s }

// TestApplyGoldenIPv4: active mode through SNAT. The client's PORT grows by 2 bytes; its
// retransmissions (same and other segmentation) come out as the first rewritten transmission
// did; every later packet, and every ack and SACK block, is released as it came: the kernel
// shifts them (seqadj). Sequence numbers wrap.
func TestApplyGoldenIPv4(t *testing.T) {
	var C, S uint32 = 0xfffffff0, 0x10000000
	port := spec{src: cli4, dst: srv4, seq: C, ack: S, flags: FlagACK | FlagPSH, tsval: 1, payload: []byte("PORT 192,0,2,10,156,64\r\n"), ipOpts: true}
	n := uint32(len(port.payload)) // 24; rewritten 26
	portOut := port.with(func(s *spec) { s.payload = []byte("PORT 203,0,113,77,156,64\r\n") })
	reply := spec{src: srv4, dst: cli4, seq: S, ack: C + n + 2, flags: FlagACK | FlagPSH, tsval: 2, payload: []byte("200 PORT command successful.\r\n")}
	list := spec{src: cli4, dst: srv4, seq: C + n, ack: S + 30, flags: FlagACK | FlagPSH, tsval: 3, payload: []byte("LIST\r\n")}
	sack := spec{src: srv4, dst: cli4, seq: S + 30, ack: C + n + 2, flags: FlagACK, tsval: 4, sack: [][2]uint32{{C + n + 4, C + n + 8}}}
	fin := spec{src: cli4, dst: srv4, seq: C + n + 6, ack: S + 30, flags: FlagACK | FlagFIN, tsval: 5}
	runSteps(t, []step{
		{name: "port rewritten", dir: Original, in: port, edits: []Edit{editOf(t, port, "192,0,2,10", "203,0,113,77")}, want: ptr(portOut)},
		{name: "retransmission identical", dir: Original, in: port, want: ptr(portOut)},
		{name: "retransmission head", dir: Original, in: port.with(func(s *spec) { s.payload = s.payload[:8] }),
			want: ptr(portOut.with(func(s *spec) { s.payload = []byte("PORT 203") }))},
		{name: "retransmission tail", dir: Original, in: port.with(func(s *spec) { s.seq += 8; s.payload = s.payload[8:] }),
			want: ptr(portOut.with(func(s *spec) { s.seq += 8; s.payload = []byte(",0,113,77,156,64\r\n") }))},
		{name: "retransmission inside edit", dir: Original, in: port.with(func(s *spec) { s.seq += 7; s.payload = s.payload[7:12] }),
			want: ptr(portOut.with(func(s *spec) { s.seq += 7; s.payload = []byte("3,0,1") }))},
		{name: "next command as it is", dir: Original, in: list},
		{name: "reply as it is", dir: Reply, in: reply},
		{name: "sack as it is", dir: Reply, in: sack},
		{name: "fin as it is", dir: Original, in: fin},
	})
}

// TestApplyGoldenIPv6: a shrinking EPRT from the client and a shrinking 229 from the server
// (edits in both directions), IPv6 with extension headers.
func TestApplyGoldenIPv6(t *testing.T) {
	var C, S uint32 = 0x7ffffff0, 0xffffffff
	eprt := spec{src: cli6, dst: srv6, seq: C, ack: S, flags: FlagACK | FlagPSH, tsval: 7, hbh: true, destOpts: true,
		payload: []byte("EPRT |2|2001:db8:0:0::10|40000|\r\n")}
	n := uint32(len(eprt.payload))
	ok := spec{src: srv6, dst: cli6, seq: S, ack: C + n - 4, flags: FlagACK | FlagPSH, tsval: 8, routing: true, payload: []byte("200 EPRT ok.\r\n")}
	r229 := spec{src: srv6, dst: cli6, seq: S + 14, ack: C + n + 2, flags: FlagACK | FlagPSH, tsval: 10, payload: []byte("229 Entering Extended Passive Mode (|||50000|)\r\n")}
	runSteps(t, []step{
		{name: "eprt shrunk", dir: Original, in: eprt, edits: []Edit{editOf(t, eprt, "2001:db8:0:0::10", "2001:db8::10")},
			want: ptr(eprt.with(func(s *spec) { s.payload = []byte("EPRT |2|2001:db8::10|40000|\r\n") }))},
		{name: "reply as it is", dir: Reply, in: ok},
		{name: "229 shrunk", dir: Reply, in: r229, edits: []Edit{editOf(t, r229, "50000", "6000")},
			want: ptr(r229.with(func(s *spec) {
				s.payload = []byte("229 Entering Extended Passive Mode (|||6000|)\r\n")
			}))},
	})
}

// TestApplyUrgent: the urgent pointer (an offset from the sequence number) keeps pointing past
// the same byte when an edit before it changes the length, also in a retransmission, and moves
// with the sequence number when a held segment is joined in front (ABOR with urgent data after a
// rewritten PORT in the same segment).
func TestApplyUrgent(t *testing.T) {
	pay := []byte("PORT 192,0,2,10,4,1\r\n\xff\xf4\xff\xf2ABOR\r\n")
	// Linux points the urgent pointer past the Data Mark (\xf2): offset 25.
	in := spec{src: cli4, dst: srv4, seq: 100, ack: 1, flags: FlagACK | FlagPSH, payload: pay, urg: 25}
	want := in.with(func(s *spec) {
		s.payload = []byte("PORT 198,51,100,200,4,1\r\n\xff\xf4\xff\xf2ABOR\r\n")
		s.urg = 29
	})
	runSteps(t, []step{
		{name: "rewrite", dir: Original, in: in, edits: []Edit{editOf(t, in, "192,0,2,10", "198,51,100,200")}, want: ptr(want)},
		{name: "retransmission", dir: Original, in: in, want: ptr(want)},
	})
	tail := spec{src: cli4, dst: srv4, seq: 10, ack: 1, flags: FlagACK | FlagPSH, payload: []byte("\xff\xf4\xff\xf2ABOR\r\n"), urg: 4}
	got, err := Extend(mustDecode(t, build(t, tail)), []byte("NOOP\r\n"), make([]byte, 0, 65535))
	if err != nil {
		t.Fatal(err)
	}
	joined := build(t, tail.with(func(s *spec) {
		s.seq -= 6
		s.payload = append([]byte("NOOP\r\n"), s.payload...)
		s.urg = 10
	}))
	if diff := cmp.Diff(joined, got); diff != "" {
		t.Errorf("Extend with urgent data (-want +got):\n%s", diff)
	}
}

// TestApplyUnchanged: without edits, packets are returned as they are, without allocating.
func TestApplyUnchanged(t *testing.T) {
	var c Conn
	b := build(t, spec{src: cli4, dst: srv4, seq: 5, ack: 9, flags: FlagACK, tsval: 3, sack: [][2]uint32{{1, 2}}, payload: []byte("PASV\r\n")})
	p := mustDecode(t, b)
	out := make([]byte, 0, 65535)
	got, changed, err := c.Apply(p, Original, nil, 1500, out)
	if err != nil || changed || &got[0] != &b[0] || len(got) != len(b) {
		t.Fatalf("Apply = (changed %v, err %v, same %v), want the input unchanged", changed, err, &got[0] == &b[0])
	}
	if n := testing.AllocsPerRun(100, func() { _, _, _ = c.Apply(p, Original, nil, 1500, out) }); n != 0 {
		t.Errorf("Apply of an unchanged packet allocates %v times", n)
	}
}

// TestApplyRetransmitAllocs: re-altering a retransmission of a rewritten segment and passing
// later packets of a rewritten connection do not allocate.
func TestApplyRetransmitAllocs(t *testing.T) {
	var c Conn
	out := make([]byte, 0, 65535)
	port := spec{src: cli4, dst: srv4, seq: 100, ack: 1, flags: FlagACK, payload: []byte("PORT 192,0,2,10,4,1\r\n")}
	pp := mustDecode(t, build(t, port))
	if _, _, err := c.Apply(pp, Original, []Edit{editOf(t, port, "192,0,2,10", "198,51,100,200")}, 1500, out); err != nil {
		t.Fatal(err)
	}
	later := mustDecode(t, build(t, spec{src: cli4, dst: srv4, seq: 121, ack: 1, flags: FlagACK, tsval: 1, payload: []byte("NOOP\r\n")}))
	ack := mustDecode(t, build(t, spec{src: srv4, dst: cli4, seq: 1, ack: 100, flags: FlagACK, tsval: 1, sack: [][2]uint32{{130, 140}, {150, 160}}}))
	for _, tc := range []struct {
		name    string
		p       *Packet
		d       Dir
		changed bool
	}{{"retransmission", pp, Original, true}, {"later", later, Original, false}, {"ack sack", ack, Reply, false}} {
		if _, changed, err := c.Apply(tc.p, tc.d, nil, 1500, out); err != nil || changed != tc.changed {
			t.Fatalf("%s: Apply = changed %v, err %v", tc.name, changed, err)
		}
		if n := testing.AllocsPerRun(100, func() { _, _, _ = c.Apply(tc.p, tc.d, nil, 1500, out) }); n != 0 {
			t.Errorf("%s: Apply allocates %v times", tc.name, n)
		}
	}
}

func TestApplyErrors(t *testing.T) {
	port := spec{src: cli4, dst: srv4, seq: 100, ack: 1, flags: FlagACK, payload: []byte("PORT 192,0,2,10,4,1\r\n")}
	ed := editOf(t, port, "192,0,2,10", "198,51,100,200")
	tests := []struct {
		name   string
		prior  []Edit // applied to port first
		edits  []Edit
		dir    Dir
		maxLen int
		want   error
	}{
		{"zero length", nil, []Edit{{Seq: 105, Len: 0, New: []byte("x")}}, Original, 1500, ErrBadEdit},
		{"before payload", nil, []Edit{{Seq: 99, Len: 2, New: nil}}, Original, 1500, ErrBadEdit},
		{"beyond payload", nil, []Edit{{Seq: 119, Len: 3, New: nil}}, Original, 1500, ErrBadEdit},
		{"overlapping", nil, []Edit{ed, {Seq: ed.Seq + 2, Len: 1, New: nil}}, Original, 1500, ErrBadEdit},
		{"unsorted", nil, []Edit{{Seq: 110, Len: 1}, {Seq: 105, Len: 1}}, Original, 1500, ErrBadEdit},
		{"before recorded", []Edit{{Seq: 110, Len: 2, New: []byte("zz")}}, []Edit{{Seq: 105, Len: 1}}, Original, 1500, ErrBadEdit},
		{"too big", nil, []Edit{ed}, Original, 60, ErrTooBig},
		{"bad dir", nil, nil, 2, 1500, ErrBadDir},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c Conn
			out := make([]byte, 0, 65535)
			in := build(t, port)
			p := mustDecode(t, in)
			if tt.prior != nil {
				if _, _, err := c.Apply(p, Original, tt.prior, 1500, out); err != nil {
					t.Fatal(err)
				}
			}
			before := c.snapshot()
			_, _, err := c.Apply(p, tt.dir, tt.edits, tt.maxLen, out)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Apply = %v, want %v", err, tt.want)
			}
			if after := c.snapshot(); after != before {
				t.Errorf("failed Apply changed the state: %s, was %s", after, before)
			}
			if !bytes.Equal(in, build(t, port)) {
				t.Errorf("failed Apply modified the packet")
			}
		})
	}
	var c Conn
	if _, _, err := c.Apply(new(Packet), Original, nil, 1500, nil); !errors.Is(err, ErrNotReady) {
		t.Errorf("Apply of an undecoded packet = %v, want ErrNotReady", err)
	}
}

// TestApplyMaxLen: a packet that does not grow is never refused; one that grows past maxLen is.
func TestApplyMaxLen(t *testing.T) {
	port := spec{src: cli4, dst: srv4, seq: 100, ack: 1, flags: FlagACK, payload: []byte("PORT 192,0,2,10,4,1\r\n")}
	b := build(t, port)
	for _, tt := range []struct {
		name   string
		new    string
		maxLen int
		want   error
	}{
		{"grow fits exactly", "198,51,100,200", len(b) + 4, nil},
		{"grow one too many", "198,51,100,200", len(b) + 3, ErrTooBig},
		{"same length over max", "198,0,2,10", len(b) - 10, nil},
		{"shrink over max", "1,2,3,4", len(b) - 10, nil},
		{"no limit", "198,51,100,200", 0, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var c Conn
			got, _, err := c.Apply(mustDecode(t, b), Original, []Edit{editOf(t, port, "192,0,2,10", tt.new)}, tt.maxLen, nil)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Apply = %v, want %v", err, tt.want)
			}
			if err == nil {
				if _, err := oracle(got); err != nil {
					t.Error(err)
				}
			}
		})
	}
}

// TestApplyBadChecksumPreserved: a segment that arrived corrupted is not given a valid checksum.
func TestApplyBadChecksumPreserved(t *testing.T) {
	port := spec{src: cli4, dst: srv4, seq: 100, ack: 1, flags: FlagACK, payload: []byte("PORT 192,0,2,10,4,1\r\n")}
	b := build(t, port)
	b[len(b)-3] ^= 0x40 // corrupt the payload, not the checksum
	var c Conn
	got, _, err := c.Apply(mustDecode(t, b), Original, []Edit{editOf(t, port, "192,0,2,10", "198,51,100,200")}, 1500, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := oracle(got); err == nil {
		t.Errorf("corrupted segment left with a valid checksum after the rewrite")
	}
}

// TestPruneAndCap: acknowledged edits are forgotten; the list never exceeds MaxEdits.
func TestPruneAndCap(t *testing.T) {
	var c Conn
	seq := uint32(0xffffff00)
	for i := range MaxEdits + 4 {
		s := spec{src: cli4, dst: srv4, seq: seq, ack: 1, flags: FlagACK, payload: []byte("PORT 192,0,2,10,4,1\r\n")}
		if _, _, err := c.Apply(mustDecode(t, build(t, s)), Original, []Edit{editOf(t, s, "192,0,2,10", "198,51,100,200")}, 1500, nil); err != nil {
			t.Fatalf("edit %d: %v", i, err)
		}
		seq += uint32(len(s.payload))
		if got := c.Edits(Original); got > MaxEdits {
			t.Fatalf("after %d edits %d remembered", i+1, got)
		}
	}
	if diff := cmp.Diff(int32(4*(MaxEdits+4)), c.Delta(Original)); diff != "" {
		t.Errorf("Delta (-want +got):\n%s", diff)
	}
	// The server acknowledges everything (in rewritten numbering); the ack passes as it is.
	ack := seq + uint32(c.Delta(Original))
	a := spec{src: srv4, dst: cli4, seq: 1, ack: ack, flags: FlagACK}
	if _, changed, err := c.Apply(mustDecode(t, build(t, a)), Reply, nil, 1500, nil); err != nil || changed {
		t.Fatalf("Apply(ack) = changed %v, %v", changed, err)
	}
	// All but the latest segment's edit: the kernel's correction point, which a spurious
	// retransmission may still carry.
	if diff := cmp.Diff(1, c.Edits(Original)); diff != "" {
		t.Errorf("edits after full ack (-want +got):\n%s", diff)
	}
	if !c.Active() || c.Delta(Original) != int32(4*(MaxEdits+4)) {
		t.Errorf("pruning lost the delta: Active %v, Delta %d", c.Active(), c.Delta(Original))
	}
}

// snapshot renders c's state for comparisons in tests.
func (c *Conn) snapshot() string { return fmt.Sprintf("%+v", c.dir) }

func TestExtend(t *testing.T) {
	for _, tt := range []struct {
		name string
		s    spec
	}{
		{"ipv4", spec{src: cli4, dst: srv4, seq: 10, ack: 1, flags: FlagACK | FlagPSH, tsval: 4, ipOpts: true, payload: []byte(",4,1\r\n")}},
		{"ipv6 wrap", spec{src: cli6, dst: srv6, seq: 3, ack: 1, flags: FlagACK, hbh: true, payload: []byte("40000|\r\n")}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			prefix := []byte("PORT 192,0,2,10")
			got, err := Extend(mustDecode(t, build(t, tt.s)), prefix, make([]byte, 0, 65535))
			if err != nil {
				t.Fatal(err)
			}
			want := build(t, tt.s.with(func(s *spec) {
				s.seq -= uint32(len(prefix))
				s.payload = append(append([]byte(nil), prefix...), s.payload...)
			}))
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("Extend (-want +got):\n%s", diff)
			}
		})
	}
}

// TestShift: numbers moved, checksum still valid (checked by gopacket), payload untouched.
func TestShift(t *testing.T) {
	in := spec{src: cli4, dst: srv4, seq: 0xfffffffe, ack: 5, flags: FlagACK | FlagPSH, tsval: 9, payload: []byte("NOOP\r\n")}
	b := build(t, in)
	got, err := Shift(mustDecode(t, b), b, 3, -2, make([]byte, 0, 65535))
	if err != nil {
		t.Fatal(err)
	}
	want := build(t, in.with(func(s *spec) { s.seq += 3; s.ack -= 2 }))
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Shift (-want +got):\n%s", diff)
	}
}
