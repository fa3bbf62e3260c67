package nat

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"

	"github.com/gopacket/gopacket"
)

// TestChecksumDifferential compares the incremental updates with a full recomputation by
// gopacket over seeded random buffers, at even and odd offsets.
func TestChecksumDifferential(t *testing.T) {
	r := rand.New(rand.NewPCG(42, 1))
	full := func(b []byte) uint16 { return gopacket.FoldChecksum(gopacket.ComputeChecksum(b, 0)) }
	for i := range 20000 {
		n := 24 + r.IntN(200)
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		if i%7 == 0 {
			clear(b[4:12]) // runs of zeros and of ones exercise the ±0 corner
		} else if i%7 == 1 {
			for j := 4; j < 12; j++ {
				b[j] = 0xff
			}
		}
		// The checksum field sits at offset 0; a 32-bit field anywhere after it.
		binary.BigEndian.PutUint16(b, 0)
		binary.BigEndian.PutUint16(b, full(b))
		off := 2 + r.IntN(n-6)
		old := binary.BigEndian.Uint32(b[off:])
		nw := r.Uint32()
		if i%5 == 0 {
			nw = old
		}
		csum := update32At(binary.BigEndian.Uint16(b), old, nw, off%2 == 1)
		binary.BigEndian.PutUint32(b[off:], nw)
		binary.BigEndian.PutUint16(b, csum)
		if got := full(b); got != 0 {
			t.Fatalf("case %d (len %d, field at %d): residue %#04x after the incremental update", i, n, off, got)
		}
	}
}

// TestSegmentChecksum: the whole-segment update equals a fresh computation, the pseudo-header
// addresses cancelling out, for random old and new segments of random lengths.
func TestSegmentChecksum(t *testing.T) {
	r := rand.New(rand.NewPCG(43, 1))
	pseudo := func(n int) uint32 {
		return gopacket.ComputeChecksum([]byte{192, 0, 2, 1, 198, 51, 100, 7, 0, 6, byte(n >> 8), byte(n)}, 0)
	}
	fresh := func(seg []byte) uint16 {
		binary.BigEndian.PutUint16(seg[tcpCsumOff:], 0)
		return gopacket.FoldChecksum(gopacket.ComputeChecksum(seg, pseudo(len(seg))))
	}
	rnd := func() []byte {
		b := make([]byte, 20+r.IntN(300))
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		return b
	}
	for i := range 20000 {
		old, nw := rnd(), rnd()
		c := fresh(old)
		binary.BigEndian.PutUint16(old[tcpCsumOff:], c)
		want := fresh(nw)
		if got := segmentChecksum(old, c, nw); got != want {
			t.Fatalf("case %d: segmentChecksum = %#04x, fresh = %#04x", i, got, want)
		}
	}
}
