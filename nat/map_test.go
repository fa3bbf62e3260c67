package nat

import (
	"bytes"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestStreamMap pins the mapping of single edits near 2^32, including the values a receiver
// never sends (inside a grown replacement beyond the original length).
func TestStreamMap(t *testing.T) {
	const a = Seq(0xfffffffe) // the edit straddles the wrap
	tests := []struct {
		name    string
		len     int
		newLen  int
		fwd     map[int32]int32 // original offset from a → rewritten offset from a
		inv     map[int32]int32 // rewritten offset from a → original offset from a
		delta   int32
		shifted bool
	}{
		{"grow 3→5", 3, 5,
			map[int32]int32{-1: -1, 0: 0, 1: 1, 2: 2, 3: 5, 4: 6},
			map[int32]int32{-1: -1, 0: 0, 1: 1, 2: 2, 3: 2, 4: 2, 5: 3, 6: 4}, 2, true},
		{"shrink 5→2", 5, 2,
			map[int32]int32{0: 0, 1: 1, 2: 2, 3: 2, 4: 2, 5: 2, 6: 3},
			map[int32]int32{0: 0, 1: 1, 2: 5, 3: 6}, -3, true},
		{"delete 3", 3, 0,
			map[int32]int32{-1: -1, 0: 0, 1: 0, 2: 0, 3: 0, 4: 1},
			map[int32]int32{-1: -1, 0: 3, 1: 4}, -3, true},
		{"same length", 4, 4,
			map[int32]int32{0: 0, 2: 2, 4: 4},
			map[int32]int32{0: 0, 2: 2, 4: 4}, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c Conn
			s := &c.dir[Original]
			s.edits = []edit{{a: a, b: a.Add(int32(tt.len)), new: make([]byte, tt.newLen)}}
			gotF, gotI := map[int32]int32{}, map[int32]int32{}
			for k := range tt.fwd {
				gotF[k] = a.Size(s.fwd(a.Add(k)))
			}
			for k := range tt.inv {
				gotI[k] = a.Size(s.inv(a.Add(k)))
			}
			if diff := cmp.Diff(tt.fwd, gotF); diff != "" {
				t.Errorf("fwd (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.inv, gotI); diff != "" {
				t.Errorf("inv (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.delta, c.Delta(Original)); diff != "" {
				t.Errorf("Delta (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.shifted, c.Shifting()); diff != "" {
				t.Errorf("Shifting (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSeq(t *testing.T) {
	tests := []struct {
		name     string
		a, b     Seq
		less, le bool
	}{
		{"plain", 1, 2, true, true},
		{"equal", 7, 7, false, true},
		{"across wrap", 0xffffffff, 0, true, true},
		{"after wrap", 3, 0xfffffff0, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := [2]bool{tt.a.LessThan(tt.b), tt.a.LessThanEq(tt.b)}
			if diff := cmp.Diff([2]bool{tt.less, tt.le}, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	if got := Seq(0xfffffffe).Add(3); got != 1 {
		t.Errorf("Add across wrap = %d, want 1", got)
	}
	if got := Seq(0xfffffffe).Size(1); got != 3 {
		t.Errorf("Size across wrap = %d, want 3", got)
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	var c Conn
	port := spec{src: cli4, dst: srv4, seq: 0xfffffff0, ack: 1, flags: FlagACK, payload: []byte("PORT 192,0,2,10,4,1\r\n")}
	if _, _, err := c.Apply(mustDecode(t, build(t, port)), Original, []Edit{editOf(t, port, "192,0,2,10", "198,51,100,200")}, 1500, nil); err != nil {
		t.Fatal(err)
	}
	r := spec{src: srv4, dst: cli4, seq: 1, ack: 0xfffffff0, flags: FlagACK, payload: []byte("227 Entering Passive Mode (192,0,2,1,4,1).\r\n")}
	if _, _, err := c.Apply(mustDecode(t, build(t, r)), Reply, []Edit{editOf(t, r, "192,0,2,1,", "1,1,1,1,")}, 1500, nil); err != nil {
		t.Fatal(err)
	}
	b, err := c.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var d Conn
	if err := d.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(c, d, cmp.AllowUnexported(Conn{}, stream{}, edit{})); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	// The restored state rewrites a retransmission identically.
	p := mustDecode(t, build(t, port))
	w, _, err1 := c.Apply(p, Original, nil, 1500, nil)
	g, _, err2 := d.Apply(p, Original, nil, 1500, nil)
	if err1 != nil || err2 != nil || !bytes.Equal(w, g) {
		t.Errorf("restored Conn rewrites differently (%v, %v)", err1, err2)
	}
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"version", append([]byte{9}, b[1:]...)},
		{"truncated", b[:len(b)-1]},
		{"trailing", append(append([]byte(nil), b...), 0)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := d
			if err := e.UnmarshalBinary(tc.b); !errors.Is(err, ErrBadState) {
				t.Fatalf("UnmarshalBinary = %v, want ErrBadState", err)
			}
		})
	}
}
