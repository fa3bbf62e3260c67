package nat

import (
	"encoding/binary"
	"math/bits"
)

// The Internet checksum (RFC 1071) helpers. Sums are accumulated unfolded in a uint64 so that a
// whole 64 KiB packet can be added without intermediate folding.

// sum adds b, read as big-endian 16-bit words (an odd trailing byte is padded with zero), to acc.
func sum(b []byte, acc uint64) uint64 {
	for len(b) >= 8 {
		acc += uint64(binary.BigEndian.Uint16(b)) + uint64(binary.BigEndian.Uint16(b[2:])) +
			uint64(binary.BigEndian.Uint16(b[4:])) + uint64(binary.BigEndian.Uint16(b[6:]))
		b = b[8:]
	}
	for len(b) >= 2 {
		acc += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		acc += uint64(b[0]) << 8
	}
	return acc
}

// fold reduces an unfolded sum to 16 bits with end-around carry.
func fold(acc uint64) uint16 {
	for acc > 0xffff {
		acc = (acc >> 16) + (acc & 0xffff)
	}
	return uint16(acc)
}

// update16 is RFC 1624 eqn. 3: the checksum csum of data in which one 16-bit word changed from
// old to new, HC' = ~(~HC + ~m + m'). It never produces 0xffff for a real header (the
// parenthesised sum is never zero), the same value a full recomputation yields.
func update16(csum, old, new uint16) uint16 {
	return ^fold(uint64(^csum) + uint64(^old) + uint64(new))
}

// update32 is update16 for an aligned 32-bit field.
func update32(csum uint16, old, new uint32) uint16 {
	csum = update16(csum, uint16(old>>16), uint16(new>>16))
	return update16(csum, uint16(old), uint16(new))
}

// segmentChecksum returns the TCP checksum for a segment newSeg (checksum field zeroed or not:
// it is skipped) of which oldSeg, carrying checksum oldCsum, is the previous version, without
// looking at the pseudo-header addresses: they are the same in both versions and cancel out
// (RFC 1624 applied to the whole segment, the pseudo-header length included). An error in the
// original checksum is carried over rather than laundered, so a segment corrupted before it
// reached us is still rejected by the receiver.
func segmentChecksum(oldSeg []byte, oldCsum uint16, newSeg []byte) uint16 {
	// Verification sum of the old segment minus its pseudo-header addresses and protocol.
	o := sum(oldSeg[:tcpCsumOff], 0)
	o = sum(oldSeg[tcpCsumOff+2:], o) + uint64(oldCsum) + uint64(len(oldSeg))
	n := sum(newSeg[:tcpCsumOff], 0)
	n = sum(newSeg[tcpCsumOff+2:], n) + uint64(len(newSeg))
	c := fold(uint64(fold(o)) + uint64(^fold(n)))
	if c == 0xffff {
		// Both encode zero in one's complement; senders write 0x0000 (~0xffff).
		c = 0
	}
	return c
}

// update32At is update32 for a 32-bit field at an even (odd=false) or odd byte offset from the
// start of the checksummed data. At an odd offset each byte lands in the other half of a
// 16-bit word; since the one's complement sum commutes with byte swapping, the update is the
// same with both halves of old and new byte-swapped.
func update32At(csum uint16, old, new uint32, odd bool) uint16 {
	if odd {
		old = swapHalves(old)
		new = swapHalves(new)
	}
	return update32(csum, old, new)
}

func swapHalves(v uint32) uint32 {
	return uint32(bits.ReverseBytes16(uint16(v>>16)))<<16 | uint32(bits.ReverseBytes16(uint16(v)))
}
