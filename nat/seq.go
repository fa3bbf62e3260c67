package nat

// Seq is a TCP sequence number. Comparisons are modulo 2^32 (RFC 793 §3.3): a is before b when
// the signed 32-bit distance b-a is positive, so numbers that wrap past 2^32 keep their order
// as long as the values compared lie within 2^31 of each other, which any TCP window does.
type Seq uint32

// LessThan reports whether s comes strictly before t in sequence space.
func (s Seq) LessThan(t Seq) bool { return int32(s-t) < 0 }

// LessThanEq reports whether s comes before t or equals it.
func (s Seq) LessThanEq(t Seq) bool { return int32(s-t) <= 0 }

// Add returns s moved by n, wrapping at 2^32.
func (s Seq) Add(n int32) Seq { return s + Seq(n) }

// Size returns the signed distance from s to t (t - s).
func (s Seq) Size(t Seq) int32 { return int32(t - s) }
