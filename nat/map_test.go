package nat

import (
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
			gotF := map[int32]int32{}
			for k := range tt.fwd {
				gotF[k] = a.Size(s.fwd(a.Add(k)))
			}
			if diff := cmp.Diff(tt.fwd, gotF); diff != "" {
				t.Errorf("fwd (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.delta, c.Delta(Original)); diff != "" {
				t.Errorf("Delta (-want +got):\n%s", diff)
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
