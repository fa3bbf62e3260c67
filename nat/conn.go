package nat

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Dir is the direction of a packet on the control connection.
type Dir uint8

const (
	Original Dir = iota // client → server (the conntrack ORIGINAL direction)
	Reply               // server → client
)

func (d Dir) String() string {
	switch d {
	case Original:
		return "original"
	case Reply:
		return "reply"
	}
	return "invalid"
}

// MaxEdits is the number of edits remembered per direction. When a new edit would exceed it,
// the oldest is forgotten (folded into the base delta); see the package documentation.
const MaxEdits = 16

// maxIPLen is the largest packet IPv4 can describe; for IPv6 the payload length field has the
// same bound, so a packet of this size or less fits either.
const maxIPLen = 0xffff

// Errors returned by Apply and Extend (wrapped with context; compare with errors.Is).
var (
	ErrTooBig   = errors.New("packet would exceed the maximum length")
	ErrBadEdit  = errors.New("invalid edit")
	ErrBadDir   = errors.New("invalid direction")
	ErrNotReady = errors.New("packet not decoded")
)

var (
	errDir       = fmt.Errorf("apply: %w", ErrBadDir)
	errUndecoded = fmt.Errorf("apply: %w", ErrNotReady)
)

// Edit replaces bytes [Seq, Seq+Len) of the direction's original stream with New.
type Edit struct {
	Seq uint32
	Len int
	New []byte
}

// Conn is the rewriting state of one control connection: per direction, the edits made to
// its byte stream, from which every position of the original stream maps to one of the
// rewritten stream and back. The zero value is ready to use. A Conn is not safe for
// concurrent use.
type Conn struct {
	dir [2]stream
}

// stream is the state of one direction.
type stream struct {
	// base is the delta of positions before the first remembered edit: the cumulative delta
	// of edits already forgotten (acknowledged or pushed out by MaxEdits).
	base  int32
	edits []edit // sorted, non-overlapping, in original-stream positions
	// end is the end of the last edit ever recorded (valid when recorded): a new edit must
	// start at or after it.
	end      Seq
	recorded bool
	// last is the first sequence number of the segment that recorded the latest edits: the
	// kernel's correction point. Those edits are never pruned, whatever the acks say: a
	// spurious retransmission of that segment is shifted by the kernel's offset_before, which
	// is right only for its rewritten bytes.
	last Seq
}

type edit struct {
	a, b   Seq   // original range [a, b), b > a
	before int32 // cumulative delta of positions before a
	new    []byte
}

// after is the cumulative delta of positions at or after e.b.
func (e *edit) after() int32 { return e.before + int32(len(e.new)) - e.a.Size(e.b) }

// start is e.a in the rewritten stream.
func (e *edit) start() Seq { return e.a.Add(e.before) }

// stop is e.b in the rewritten stream.
func (e *edit) stop() Seq { return e.b.Add(e.after()) }

// idle reports whether the stream maps every position to itself.
func (s *stream) idle() bool { return s.base == 0 && len(s.edits) == 0 }

// delta is the cumulative delta at the end of the stream.
func (s *stream) delta() int32 {
	if n := len(s.edits); n > 0 {
		return s.edits[n-1].after()
	}
	return s.base
}

// fwd maps an original position to the rewritten stream. Inside an edit [a,b) position p
// maps to a'+min(p-a, len(New)); b maps to a'+len(New): the map is monotonic, so any
// segmentation of the original stream maps to contiguous, non-overlapping pieces.
func (s *stream) fwd(p Seq) Seq {
	for i := len(s.edits) - 1; i >= 0; i-- {
		e := &s.edits[i]
		if !p.LessThan(e.b) {
			return p.Add(e.after())
		}
		if !p.LessThan(e.a) {
			return e.start().Add(min(e.a.Size(p), int32(len(e.new))))
		}
	}
	return p.Add(s.base)
}

// overlaps reports whether the original range [x0, x1) touches a remembered edit.
func (s *stream) overlaps(x0, x1 Seq) bool {
	for i := len(s.edits) - 1; i >= 0; i-- {
		e := &s.edits[i]
		if e.a.LessThan(x1) && x0.LessThan(e.b) {
			return true
		}
		if e.b.LessThanEq(x0) {
			return false
		}
	}
	return false
}

// push validates new edits for a payload [x0, x1) and appends them tentatively, referring to
// the caller's New slices; commit copies them, or the caller truncates back.
func (s *stream) push(edits []Edit, x0, x1 Seq) error {
	prevEnd, havePrev := s.end, s.recorded
	for i := range edits {
		e := &edits[i]
		if e.Len < 1 || e.Len > maxIPLen || len(e.New) > maxIPLen {
			return fmt.Errorf("edit at %d: length %d, replacement %d bytes: %w", e.Seq, e.Len, len(e.New), ErrBadEdit)
		}
		a := Seq(e.Seq)
		b := a.Add(int32(e.Len))
		if a.LessThan(x0) || x1.LessThan(b) {
			return fmt.Errorf("edit [%d,%d) outside payload [%d,%d): %w", a, b, x0, x1, ErrBadEdit)
		}
		if havePrev && a.LessThan(prevEnd) {
			return fmt.Errorf("edit [%d,%d) before recorded end %d: %w", a, b, prevEnd, ErrBadEdit)
		}
		s.edits = append(s.edits, edit{a: a, b: b, before: s.delta(), new: e.New})
		prevEnd, havePrev = b, true
	}
	return nil
}

// commit makes the edits from index n0 on permanent: copies their text and bounds the list.
func (s *stream) commit(n0 int, x0 Seq) {
	if n0 == len(s.edits) {
		return
	}
	s.last = x0
	for i := n0; i < len(s.edits); i++ {
		s.edits[i].new = append([]byte(nil), s.edits[i].new...)
	}
	s.end, s.recorded = s.edits[len(s.edits)-1].b, true
	for len(s.edits) > MaxEdits {
		s.drop(1)
	}
}

// drop forgets the first n edits, folding their delta into base.
func (s *stream) drop(n int) {
	if n <= 0 {
		return
	}
	s.base = s.edits[n-1].after()
	m := copy(s.edits, s.edits[n:])
	clear(s.edits[m:])
	s.edits = s.edits[:m]
}

// prune forgets the edits whose rewritten image the peer has acknowledged (q, an ack in
// rewritten numbering): the sender will not retransmit them.
func (s *stream) prune(q Seq) {
	n := 0
	for n < len(s.edits) && s.edits[n].stop().LessThanEq(q) && s.edits[n].a.LessThan(s.last) {
		n++
	}
	s.drop(n)
}

// Active reports whether c remembers any edit whose retransmission must be rewritten.
func (c *Conn) Active() bool { return len(c.dir[0].edits) > 0 || len(c.dir[1].edits) > 0 }

// Delta returns the cumulative length change of direction d's stream: the sum of every edit's
// change, including forgotten ones (and the base set by Restore).
func (c *Conn) Delta(d Dir) int32 {
	if d > Reply {
		return 0
	}
	return c.dir[d].delta()
}

// Restore sets the cumulative delta of direction d's stream, for a connection met again after
// a restart whose earlier edits are known only by their total (the kernel's offset_after). It
// is a no-op once d has remembered edits.
func (c *Conn) Restore(d Dir, delta int32) {
	if d > Reply || len(c.dir[d].edits) > 0 {
		return
	}
	c.dir[d].base = delta
}

// Edits returns the number of edits remembered for direction d.
func (c *Conn) Edits(d Dir) int {
	if d > Reply {
		return 0
	}
	return len(c.dir[d].edits)
}

// Apply produces the packet to release for p, which travels in direction d: its payload with
// every remembered or new edit applied, lengths and checksums fixed. Its sequence and
// acknowledgment numbers and SACK blocks are left as they are: the kernel shifts them
// (conntrack's seqadj, which the daemon registers for every edit that changes the length), so
// the released packet keeps the sender's numbering. edits are new edits announced by this packet
// (sorted, non-overlapping, each inside p's payload range, none before an edit already
// recorded); they are recorded only if Apply succeeds. A retransmission that covers a remembered
// edit is rewritten to the same bytes again. Acknowledged edits of the other direction are
// forgotten (see the package documentation).
//
// When nothing changes Apply returns p.Bytes(), false and does not copy or allocate.
// Otherwise the result is built in out[:0] (which must not overlap p's bytes; with cap(out) ≥
// 65535 Apply does not allocate unless it records edits). maxLen is the largest packet that may
// be released: a packet that would grow beyond it (and beyond its original length) is refused
// with ErrTooBig, nothing is recorded and p is untouched. maxLen ≤ 0 means only IP's own limit.
func (c *Conn) Apply(p *Packet, d Dir, edits []Edit, maxLen int, out []byte) ([]byte, bool, error) {
	if d > Reply {
		return nil, false, errDir
	}
	if p.b == nil {
		return nil, false, errUndecoded
	}
	s, o := &c.dir[d], &c.dir[d^1]
	if len(edits) == 0 && len(s.edits) == 0 {
		o.pruneIfAck(p)
		return p.b, false, nil
	}
	x0 := Seq(p.PayloadSeq())
	payload := p.b[p.dataOff:]
	x1 := x0.Add(int32(len(payload)))

	n0 := len(s.edits)
	if len(edits) > 0 {
		if err := s.push(edits, x0, x1); err != nil {
			s.truncate(n0)
			return nil, false, fmt.Errorf("apply %s: %w", d, err)
		}
	}
	if !s.overlaps(x0, x1) {
		o.pruneIfAck(p)
		return p.b, false, nil
	}

	// The payload changes: assemble the rewritten bytes of [x0, x1).
	newPay := int(s.fwd(x0).Size(s.fwd(x1)))
	newLen := p.dataOff + newPay
	if newLen > maxIPLen || (maxLen > 0 && newLen > maxLen && newLen > len(p.b)) {
		s.truncate(n0)
		return nil, false, fmt.Errorf("apply %s: %d-byte packet would become %d bytes (max %d): %w", d, len(p.b), newLen, maxLen, ErrTooBig)
	}
	out = append(out[:0], p.b[:p.dataOff]...)
	out = s.assemble(out, payload, x0, x1)
	t := out[p.tcpOff:]
	if p.flags&FlagURG != 0 {
		// The urgent pointer is an offset from the segment's sequence number: it points
		// past the same byte after the bytes before it changed length.
		if up := int(binary.BigEndian.Uint16(t[tcpUrgOff:])); up > 0 {
			nu := int(s.fwd(x0).Size(s.fwd(x0.Add(int32(up)))))
			binary.BigEndian.PutUint16(t[tcpUrgOff:], uint16(min(nu, 0xffff)))
		}
	}
	setIPLength(out, p.version, p.tcpOff)
	csum := binary.BigEndian.Uint16(p.b[p.tcpOff+tcpCsumOff:])
	binary.BigEndian.PutUint16(t[tcpCsumOff:], segmentChecksum(p.b[p.tcpOff:], csum, t))
	s.commit(n0, x0)
	o.pruneIfAck(p)
	return out, true, nil
}

// truncate drops tentatively pushed edits.
func (s *stream) truncate(n0 int) {
	clear(s.edits[n0:])
	s.edits = s.edits[:n0]
}

// pruneIfAck forgets the edits of s that p acknowledges.
func (s *stream) pruneIfAck(p *Packet) {
	if p.ACK() && len(s.edits) > 0 {
		s.prune(Seq(p.ack))
	}
}

// assemble appends to out the rewritten-stream bytes whose original positions are [x0, x1),
// payload holding the original bytes.
func (s *stream) assemble(out, payload []byte, x0, x1 Seq) []byte {
	pos := x0
	for i := range s.edits {
		e := &s.edits[i]
		if e.b.LessThanEq(pos) {
			continue
		}
		if x1.LessThanEq(e.a) {
			break
		}
		if pos.LessThan(e.a) {
			out = append(out, payload[x0.Size(pos):x0.Size(e.a)]...)
			pos = e.a
		}
		hi := e.b
		if x1.LessThan(hi) {
			hi = x1
		}
		out = append(out, e.new[e.image(pos):e.image(hi)]...)
		pos = hi
	}
	return append(out, payload[x0.Size(pos):]...)
}

// image is the offset in e.new of original position p in [a, b].
func (e *edit) image(p Seq) int {
	if p == e.b {
		return len(e.new)
	}
	return min(int(e.a.Size(p)), len(e.new))
}

// setIPLength writes len(b) into the IP header of b and, for IPv4, updates the header
// checksum (incrementally, so an already wrong checksum stays wrong).
func setIPLength(b []byte, version uint8, tcpOff int) {
	if version == 4 {
		old := binary.BigEndian.Uint16(b[2:])
		binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
		binary.BigEndian.PutUint16(b[10:], update16(binary.BigEndian.Uint16(b[10:]), old, uint16(len(b))))
		return
	}
	binary.BigEndian.PutUint16(b[4:], uint16(len(b)-40))
}

// Extend returns, in out[:0], a copy of p whose payload is prefix followed by p's payload and
// whose sequence number is p.Seq()-len(prefix), with lengths and checksums fixed. It joins a
// command split across segments (the prefix being the held earlier segment's payload) so the
// whole line can be edited in one packet. out must not overlap p's bytes or prefix. The
// result must then be decoded before it is given to Apply.
func Extend(p *Packet, prefix []byte, out []byte) ([]byte, error) {
	if p.b == nil {
		return nil, fmt.Errorf("extend: %w", ErrNotReady)
	}
	if p.SYN() && len(prefix) > 0 {
		return nil, fmt.Errorf("extend: data before a syn: %w", ErrBadEdit)
	}
	n := len(p.b) + len(prefix)
	if n > maxIPLen {
		return nil, fmt.Errorf("extend: %d-byte packet with a %d-byte prefix: %w", len(p.b), len(prefix), ErrTooBig)
	}
	out = append(out[:0], p.b[:p.dataOff]...)
	out = append(out, prefix...)
	out = append(out, p.b[p.dataOff:]...)
	t := out[p.tcpOff:]
	binary.BigEndian.PutUint32(t[tcpSeqOff:], p.seq-uint32(len(prefix)))
	if p.flags&FlagURG != 0 {
		// The urgent pointer counts from the sequence number, which moved back.
		if up := int(binary.BigEndian.Uint16(t[tcpUrgOff:])); up > 0 {
			binary.BigEndian.PutUint16(t[tcpUrgOff:], uint16(min(up+len(prefix), 0xffff)))
		}
	}
	setIPLength(out, p.version, p.tcpOff)
	csum := binary.BigEndian.Uint16(p.b[p.tcpOff+tcpCsumOff:])
	binary.BigEndian.PutUint16(t[tcpCsumOff:], segmentChecksum(p.b[p.tcpOff:], csum, t))
	return out, nil
}

// Shift returns, in out[:0], a copy of b (a decoded packet p, possibly the output of Apply:
// the same headers) with its sequence number moved by seq and its acknowledgment number by ack,
// the TCP checksum updated incrementally. The kernel normally shifts numbers (seqadj); the
// daemon uses Shift for the one packet the kernel cannot: the first packet of a connection
// whose conntrack entry (and adjustment) was destroyed, before the kernel's new entry exists
// to carry the adjustment. SACK blocks are left alone.
func Shift(p *Packet, b []byte, seq, ack int32, out []byte) ([]byte, error) {
	if p.b == nil {
		return nil, fmt.Errorf("shift: %w", ErrNotReady)
	}
	if len(b) < p.tcpOff+tcpMinLen {
		return nil, fmt.Errorf("shift: %d-byte packet: %w", len(b), ErrBadEdit)
	}
	out = append(out[:0], b...)
	t := out[p.tcpOff:]
	csum := binary.BigEndian.Uint16(t[tcpCsumOff:])
	oldSeq := binary.BigEndian.Uint32(t[tcpSeqOff:])
	newSeq := oldSeq + uint32(seq)
	csum = update32(csum, oldSeq, newSeq)
	binary.BigEndian.PutUint32(t[tcpSeqOff:], newSeq)
	if p.ACK() {
		oldAck := binary.BigEndian.Uint32(t[tcpAckOff:])
		newAck := oldAck + uint32(ack)
		csum = update32(csum, oldAck, newAck)
		binary.BigEndian.PutUint32(t[tcpAckOff:], newAck)
	}
	binary.BigEndian.PutUint16(t[tcpCsumOff:], csum)
	return out, nil
}
