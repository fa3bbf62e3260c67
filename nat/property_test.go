package nat

import (
	"bytes"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
)

var (
	propSeed  = flag.Uint64("nat.seed", 1, "base seed of TestPropertyStreams (case i uses seed+i)")
	propCases = flag.Int("nat.cases", 2000, "number of TestPropertyStreams cases (-short: a tenth)")
)

// refStream is the reference model of one direction, built independently of Conn: the
// rewritten stream spelled out byte by byte and a table from every original position (relative
// to the first data byte) to its rewritten position.
type refStream struct {
	orig  []byte
	edits []Edit // relative positions in Seq
	rw    []byte
	fwd   []int // len(orig)+1 entries
}

func newRefStream(r *rand.Rand) *refStream {
	s := &refStream{orig: make([]byte, 20+r.IntN(700))}
	for i := range s.orig {
		s.orig[i] = byte(r.Uint32())
	}
	// Random non-overlapping edits, growing and shrinking (and deleting) text.
	// Edits never start a segment (an FTP command's argument never does; see cuts): the
	// kernel maps an ack at a segment start conservatively.
	for pos, n := 1+r.IntN(20), r.IntN(7); n > 0 && pos < len(s.orig); n-- {
		l := 1 + r.IntN(min(20, len(s.orig)-pos))
		nw := make([]byte, r.IntN(31))
		for i := range nw {
			nw[i] = 'a' + byte(r.IntN(26))
		}
		s.edits = append(s.edits, Edit{Seq: uint32(pos), Len: l, New: nw})
		pos += l + 1 + r.IntN(200)
	}
	s.fwd = make([]int, len(s.orig)+1)
	ei := 0
	for p := 0; p <= len(s.orig); {
		if ei < len(s.edits) && int(s.edits[ei].Seq) == p {
			e := s.edits[ei]
			start := len(s.rw)
			for k := 0; k < e.Len; k++ {
				s.fwd[p+k] = start + min(k, len(e.New))
			}
			s.rw = append(s.rw, e.New...)
			p += e.Len
			ei++
			continue
		}
		s.fwd[p] = len(s.rw)
		if p < len(s.orig) {
			s.rw = append(s.rw, s.orig[p])
		}
		p++
	}
	return s
}

// inv is the largest original position whose image is at or before q (q beyond the rewritten
// data, i.e. the FIN, maps one to one).
func (s *refStream) inv(q int) int {
	if q >= len(s.rw) {
		return len(s.orig) + q - len(s.rw)
	}
	p := 0
	for i, f := range s.fwd {
		if f <= q {
			p = i
		}
	}
	return p
}

// cuts returns first-transmission segment ends: never strictly inside an edit, so that each
// edit is announced by the one packet that carries all of it (what the daemon's hold-back and
// Extend achieve).
func (s *refStream) cuts(r *rand.Rand) []int {
	var cs []int
	for p := 0; p < len(s.orig); {
		q := min(len(s.orig), p+1+r.IntN(90))
		for _, e := range s.edits {
			if a, b := int(e.Seq), int(e.Seq)+e.Len; a <= q && q < b {
				q = b
			}
		}
		cs = append(cs, q)
		p = q
	}
	return cs
}

// editIn reports whether an edit lies in [r0, r1).
func (s *refStream) editIn(r0, r1 int) bool {
	for _, e := range s.edits {
		if a := int(e.Seq); a >= r0 && a < r1 {
			return true
		}
	}
	return false
}

// segStart is the start of the first-transmission segment holding position v.
func (p *peer) segStart(v int) int {
	start := 0
	for _, c := range p.cuts[:p.next] {
		if c > v {
			break
		}
		start = c
	}
	return start
}

type peer struct {
	addr   netip.AddrPort
	isn    uint32
	out    *refStream // what this peer sends (original numbering)
	cuts   []int
	next   int  // next first transmission
	sndNxt int  // data positions sent (relative)
	finOut bool // FIN sent
	sndUna int  // acknowledged (relative, the FIN counts one)

	in     *refStream // the peer's stream, received rewritten
	have   []bool
	buf    []byte
	rcvNxt int // rewritten relative, +1 once the FIN is in
	finIn  bool
}

type wire struct {
	to       int
	pkt      []byte
	seq, ack uint32 // as the kernel released them (seqadj applied)
}

// kernelAdj is an independent model of the kernel's sequence adjustment of one direction
// (net/netfilter/nf_conntrack_seqadj.c): what the daemon registers after a resize, and how
// the kernel then shifts every packet after the gateway.
type kernelAdj struct {
	pos           uint32
	before, after int32
}

// set is nf_ct_seqadj_set for a segment starting at seq that changed the length by off.
func (k *kernelAdj) set(seq uint32, off int32) {
	if off == 0 {
		return
	}
	if k.before == k.after || int32(seq-k.pos) > 0 {
		k.pos, k.before = seq, k.after
	}
	k.after += off
}

// seq shifts a sequence number of this direction.
func (k *kernelAdj) seq(v uint32) uint32 {
	if int32(v-k.pos) > 0 {
		return v + uint32(k.after)
	}
	return v + uint32(k.before)
}

// ack maps an acknowledgment (or SACK edge) of the other direction back.
func (k *kernelAdj) ack(v uint32) uint32 {
	if int32(v-uint32(k.before)-k.pos) > 0 {
		return v - uint32(k.after)
	}
	return v - uint32(k.before)
}

// TestPropertyStreams: two peers exchange random streams through a gateway (Conn for the
// payload, a model of the kernel's seqadj for the numbers, registered as the daemon does) that
// rewrites random ranges of both, with random segmentation, retransmissions (whole segments,
// coalesced or not), loss, duplication and reordering after the gateway, and sequence numbers
// near 2^32. The receiver's reassembled stream must be the rewritten stream, every byte it
// accepts must be right, and every ack and SACK edge must map back exactly to the sender's
// original numbering. Like nf_nat_ftp, the kernel's two-level adjustment is exact for every
// segment that starts after the previous resized segment, so a peer sends a segment with a new
// edit only once its previous resized segment is acknowledged: an FTP peer waits for the reply
// to its command (and a server sends a 227 only in answer to one).
func TestPropertyStreams(t *testing.T) {
	n := *propCases
	if testing.Short() {
		n /= 10
	}
	defer func() { t.Logf("%d cases: %+v", n, propStats) }()
	for i := range n {
		seed := *propSeed + uint64(i)
		if err := runProperty(seed); err != nil {
			t.Fatalf("seed %d (rerun: go test ./nat -run TestPropertyStreams -nat.seed %d -nat.cases 1): %v", seed, seed, err)
		}
	}
}

// propStats counts what the property test exercised (logged with -v).
var propStats struct{ packets, changed, resized, edits, belowAck, sacks int }

var debugProp = false

func runProperty(seed uint64) error {
	r := rand.New(rand.NewPCG(seed, 0x6e6174))
	ps := [2]*peer{{addr: cli4}, {addr: srv4}}
	if r.IntN(2) == 0 {
		ps[0].addr, ps[1].addr = cli6, srv6
	}
	s0, s1 := newRefStream(r), newRefStream(r)
	ps[0].out, ps[0].in = s0, s1
	ps[1].out, ps[1].in = s1, s0
	for _, p := range ps {
		p.isn = ^uint32(0) - uint32(r.IntN(1500)) // data crosses 2^32
		if r.IntN(4) == 0 {
			p.isn = r.Uint32()
		}
		p.cuts = p.out.cuts(r)
		p.have = make([]bool, len(p.in.rw))
		p.buf = make([]byte, len(p.in.rw))
	}
	var (
		c       Conn
		net     []wire
		outBuf  = make([]byte, 0, 65535)
		decoded Packet
		// ALG-side: highest original position of each stream acknowledged through the gateway.
		acked [2]int
		adj   [2]kernelAdj
		// end of the last segment that carried an edit, per direction (relative)
		lastEdit [2]int
	)
	// send passes a packet from peers[from] through the gateway and onto the wire.
	send := func(from int, r0, r1 int, fin bool) error {
		p, q := ps[from], ps[1-from]
		sp := spec{src: p.addr, dst: q.addr, seq: p.isn + 1 + uint32(r0), ack: q.isn + 1 + uint32(p.rcvNxt),
			flags: FlagACK, payload: p.out.orig[r0:r1], tsval: uint32(r.IntN(3))}
		if fin {
			sp.flags |= FlagFIN
		}
		// SACK blocks: the out-of-order runs above rcvNxt (up to 3).
		for i := p.rcvNxt; i < len(p.have) && len(sp.sack) < 3; {
			if !p.have[i] {
				i++
				continue
			}
			j := i
			for j < len(p.have) && p.have[j] {
				j++
			}
			sp.sack = append(sp.sack, [2]uint32{q.isn + 1 + uint32(i), q.isn + 1 + uint32(j)})
			i = j
		}
		in, err := buildErr(sp)
		if err != nil {
			return err
		}
		if err := decoded.Decode(in); err != nil {
			return fmt.Errorf("decode input: %w", err)
		}
		var edits []Edit
		for _, e := range p.out.edits {
			if a := int(e.Seq); a >= r0 && a+e.Len <= r1 && a >= p.sndNxt {
				edits = append(edits, Edit{Seq: p.isn + 1 + e.Seq, Len: e.Len, New: e.New})
			}
		}
		got, changed, err := c.Apply(&decoded, Dir(from), edits, 0, outBuf)
		propStats.packets++
		if changed {
			propStats.changed++
		}
		if len(decoded.Payload()) != len(got)-len(in)+len(decoded.Payload()) {
			propStats.resized++
		}
		propStats.edits += len(edits)
		if r0 < acked[from] {
			propStats.belowAck++
		}
		if len(sp.sack) > 0 {
			propStats.sacks++
		}
		if err != nil {
			return fmt.Errorf("apply %v: %w", Dir(from), err)
		}
		if !changed {
			if &got[0] != &in[0] {
				return fmt.Errorf("unchanged packet not returned as is")
			}
		} else if bytes.Equal(got, in) && !bytes.Equal(p.out.orig[r0:r1], p.out.rw[p.out.fwd[r0]:p.out.fwd[r1]]) {
			return fmt.Errorf("changed packet equals input")
		}
		tl, err := oracle(got)
		if err != nil {
			return fmt.Errorf("gateway output: %w", err)
		}
		if tl.Seq != sp.seq || tl.Ack != sp.ack {
			return fmt.Errorf("Apply changed the numbers: seq %d→%d ack %d→%d", sp.seq, tl.Seq, sp.ack, tl.Ack)
		}
		// The daemon registers the resize before the release; the kernel then shifts.
		var delta int32
		for _, e := range edits {
			delta += int32(len(e.New) - e.Len)
		}
		if len(edits) > 0 {
			lastEdit[from] = r1
		}
		adj[from].set(sp.seq, delta)
		if debugProp {
			fmt.Printf("send from %d [%d,%d) edits %d delta %d adj %+v seqK %d fwd %d\n", from, r0, r1, len(edits), delta, adj[from], adj[from].seq(sp.seq)-p.isn-1, p.out.fwd[r0])
		}
		tl.Seq = adj[from].seq(tl.Seq)
		tl.Ack = adj[1-from].ack(tl.Ack)
		// Numbers and payload, as an independent decoder sees them.
		wantSeq := p.isn + 1 + uint32(p.out.fwd[r0])
		if r0 >= acked[from] {
			if tl.Seq != wantSeq {
				return fmt.Errorf("%v seq: orig rel %d → %d, want %d", Dir(from), r0, tl.Seq-p.isn-1, wantSeq-p.isn-1)
			}
			if want := p.out.rw[p.out.fwd[r0]:p.out.fwd[r1]]; !bytes.Equal(tl.Payload, want) {
				return fmt.Errorf("%v payload of orig [%d,%d): %q, want %q", Dir(from), r0, r1, tl.Payload, want)
			}
		}
		// The reference knows every edit; the gateway only those announced so far, which all
		// lie before q.sndNxt. They differ only for a deletion starting exactly at q.sndNxt,
		// whose image is also the image of q.sndNxt: clamp to what q has sent.
		qSent := q.sndNxt
		if q.finOut {
			qSent++
		}
		refInv := func(v int) int { return min(q.out.inv(v), qSent) }
		if want := q.isn + 1 + uint32(refInv(p.rcvNxt)); tl.Ack != want {
			return fmt.Errorf("%v ack: rewritten rel %d → %d, want %d", Dir(from), p.rcvNxt, tl.Ack-q.isn-1, want-q.isn-1)
		}
		var sack []uint32
		for _, o := range tl.Options {
			if o.OptionType == 5 {
				for k := 0; k+4 <= len(o.OptionData); k += 4 {
					sack = append(sack, uint32(o.OptionData[k])<<24|uint32(o.OptionData[k+1])<<16|uint32(o.OptionData[k+2])<<8|uint32(o.OptionData[k+3]))
				}
			}
		}
		for k, blk := range sp.sack {
			for e := range 2 {
				want := q.isn + 1 + uint32(refInv(int(blk[e]-q.isn-1)))
				if got := adj[1-from].ack(sack[2*k+e]); got != want {
					return fmt.Errorf("%v sack edge %d: %d, want %d", Dir(from), blk[e]-q.isn-1, got-q.isn-1, want-q.isn-1)
				}
			}
		}
		acked[1-from] = max(acked[1-from], refInv(p.rcvNxt))
		net = append(net, wire{to: 1 - from, pkt: append([]byte(nil), got...), seq: tl.Seq, ack: tl.Ack})
		return nil
	}
	deliver := func(w wire) error {
		p, q := ps[w.to], ps[1-w.to]
		var d Packet
		if err := d.Decode(w.pkt); err != nil {
			return fmt.Errorf("decode delivered: %w", err)
		}
		// Data: every byte at or beyond rcvNxt must be the rewritten stream's.
		y0 := int(int32(w.seq - q.isn - 1))
		pay := d.Payload()
		if debugProp {
			fmt.Printf("deliver to %d seq %d len %d ack %d\n", w.to, y0, len(pay), int(int32(w.ack-p.isn-1)))
		}
		if y0+len(pay) > len(p.in.rw) {
			return fmt.Errorf("data beyond the rewritten stream: [%d,%d) of %d", y0, y0+len(pay), len(p.in.rw))
		}
		for i, b := range pay {
			pos := y0 + i
			if pos < p.rcvNxt {
				continue // a receiver discards what it already has
			}
			if b != p.in.rw[pos] {
				return fmt.Errorf("receiver %d: byte %d is %#x, want %#x", w.to, pos, b, p.in.rw[pos])
			}
			p.have[pos], p.buf[pos] = true, b
		}
		for p.rcvNxt < len(p.have) && p.have[p.rcvNxt] {
			p.rcvNxt++
		}
		if d.FIN() {
			if y0+len(pay) != len(p.in.rw) {
				return fmt.Errorf("fin at %d, want %d", y0+len(pay), len(p.in.rw))
			}
			p.finIn = true
		}
		if p.finIn && p.rcvNxt == len(p.have) {
			p.rcvNxt = len(p.have) + 1
		}
		// Ack: in the receiver's original numbering, never beyond what it sent.
		a := int(int32(w.ack - p.isn - 1))
		limit := p.sndNxt
		if p.finOut {
			limit++
		}
		if a > limit {
			return fmt.Errorf("peer %d acked %d, sent only %d", w.to, a, limit)
		}
		p.sndUna = max(p.sndUna, a)
		return nil
	}
	done := func() bool {
		for _, p := range ps {
			if p.sndUna != len(p.out.orig)+1 || p.rcvNxt != len(p.in.rw)+1 {
				return false
			}
		}
		return true
	}
	for step := 0; !done(); step++ {
		if step > 50000 {
			return fmt.Errorf("no progress: %+v %+v", *ps[0], *ps[1])
		}
		from := r.IntN(2)
		p := ps[from]
		switch k := r.IntN(10); {
		case k < 3 && p.next < len(p.cuts) && (p.sndUna >= lastEdit[from] || !p.out.editIn(p.sndNxt, p.cuts[p.next])): // new data
			r0, r1 := p.sndNxt, p.cuts[p.next]
			fin := r1 == len(p.out.orig) && r.IntN(2) == 0
			if err := send(from, r0, r1, fin); err != nil {
				return err
			}
			p.next++
			p.sndNxt = r1
			p.finOut = p.finOut || fin
		case k < 3 && !p.finOut && p.next == len(p.cuts): // the FIN alone
			if err := send(from, p.sndNxt, p.sndNxt, true); err != nil {
				return err
			}
			p.finOut = true
		case k < 5 && (p.sndUna < p.sndNxt || (p.finOut && p.sndUna <= p.sndNxt) || len(net) == 0):
			// Retransmission of whole segments from the one holding snd_una, one or several
			// coalesced (or a pure ack).
			r0, r1 := p.segStart(min(p.sndUna, p.sndNxt)), p.sndNxt
			for i, c := range p.cuts[:p.next] {
				if c > r0 {
					r1 = p.cuts[min(i+r.IntN(3), p.next-1)]
					break
				}
			}
			if err := send(from, r0, r1, p.finOut && r1 == p.sndNxt); err != nil {
				return err
			}
		case k < 6: // a pure ack
			if err := send(from, p.sndNxt, p.sndNxt, false); err != nil {
				return err
			}
		case len(net) > 0: // the network delivers, loses or duplicates one packet, in any order
			i := r.IntN(len(net))
			w := net[i]
			switch x := r.IntN(20); {
			case x < 2: // lost
			case x < 3: // duplicated
				net = append(net, w)
				if err := deliver(w); err != nil {
					return err
				}
			default:
				if err := deliver(w); err != nil {
					return err
				}
			}
			net[i] = net[len(net)-1]
			net = net[:len(net)-1]
		}
	}
	for i, p := range ps {
		if !bytes.Equal(p.buf, p.in.rw) {
			return fmt.Errorf("receiver %d reassembled %q, want %q", i, p.buf, p.in.rw)
		}
	}
	return nil
}
