package nat

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// ErrBadState is returned by UnmarshalBinary for data that is not a valid Conn state.
var ErrBadState = errors.New("invalid nat state")

const stateVersion = 1

// MarshalBinary encodes the state of c (for restart persistence): a version byte, then per
// direction the base delta, whether an edit was recorded and the end of the last one, and the
// remembered edits (start, length, delta before, replacement).
func (c *Conn) MarshalBinary() ([]byte, error) {
	b := []byte{stateVersion}
	for d := range c.dir {
		s := &c.dir[d]
		b = binary.BigEndian.AppendUint32(b, uint32(s.base))
		rec := byte(0)
		if s.recorded {
			rec = 1
		}
		b = append(b, rec)
		b = binary.BigEndian.AppendUint32(b, uint32(s.end))
		b = append(b, byte(len(s.edits)))
		for i := range s.edits {
			e := &s.edits[i]
			b = binary.BigEndian.AppendUint32(b, uint32(e.a))
			b = binary.BigEndian.AppendUint32(b, uint32(e.a.Size(e.b)))
			b = binary.BigEndian.AppendUint32(b, uint32(e.before))
			b = binary.BigEndian.AppendUint16(b, uint16(len(e.new)))
			b = append(b, e.new...)
		}
	}
	return b, nil
}

// UnmarshalBinary replaces the state of c with one encoded by MarshalBinary. It checks that
// the edits are consistent (ordered, non-overlapping, deltas chained) and leaves c unchanged
// on error.
func (c *Conn) UnmarshalBinary(b []byte) error {
	if len(b) < 1 || b[0] != stateVersion {
		return fmt.Errorf("unmarshal nat state: version: %w", ErrBadState)
	}
	b = b[1:]
	var n Conn
	for d := range n.dir {
		s := &n.dir[d]
		if len(b) < 10 {
			return fmt.Errorf("unmarshal nat state %s: %w", Dir(d), ErrBadState)
		}
		s.base = int32(binary.BigEndian.Uint32(b))
		s.recorded = b[4] == 1
		s.end = Seq(binary.BigEndian.Uint32(b[5:]))
		cnt := int(b[9])
		b = b[10:]
		if cnt > MaxEdits || (cnt > 0 && !s.recorded) {
			return fmt.Errorf("unmarshal nat state %s: %d edits: %w", Dir(d), cnt, ErrBadState)
		}
		for range cnt {
			if len(b) < 14 {
				return fmt.Errorf("unmarshal nat state %s: edit: %w", Dir(d), ErrBadState)
			}
			a := Seq(binary.BigEndian.Uint32(b))
			l := binary.BigEndian.Uint32(b[4:])
			before := int32(binary.BigEndian.Uint32(b[8:]))
			nl := int(binary.BigEndian.Uint16(b[12:]))
			b = b[14:]
			if l < 1 || l > maxIPLen || len(b) < nl {
				return fmt.Errorf("unmarshal nat state %s: edit length: %w", Dir(d), ErrBadState)
			}
			if before != s.delta() || (len(s.edits) > 0 && a.LessThan(s.edits[len(s.edits)-1].b)) {
				return fmt.Errorf("unmarshal nat state %s: edit order: %w", Dir(d), ErrBadState)
			}
			s.edits = append(s.edits, edit{a: a, b: a.Add(int32(l)), before: before, new: append([]byte(nil), b[:nl]...)})
			b = b[nl:]
		}
		if cnt > 0 && s.end != s.edits[cnt-1].b {
			return fmt.Errorf("unmarshal nat state %s: end: %w", Dir(d), ErrBadState)
		}
	}
	if len(b) != 0 {
		return fmt.Errorf("unmarshal nat state: %d trailing bytes: %w", len(b), ErrBadState)
	}
	*c = n
	return nil
}
