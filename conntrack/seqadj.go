package conntrack

import (
	"errors"
	"fmt"

	ct "github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
)

// SeqAdj is the kernel's sequence adjustment of one direction of a connection (struct
// nf_ct_seqadj, net/netfilter/nf_conntrack_seqadj.c): a segment of that direction whose
// sequence number is at or before Pos is shifted by Before, a later one by After; the other
// direction's acknowledgements (and SACK blocks) are shifted back the same way. Once it is set
// the kernel applies it to every packet of the connection, whether ftpalg runs or not, and
// conntrackd replicates it with the entry.
type SeqAdj struct {
	Pos    uint32 // correction_pos: sequence number of the segment that carried the last resize
	Before int32  // offset_before
	After  int32  // offset_after
}

// IsZero reports whether a shifts nothing.
func (a SeqAdj) IsZero() bool { return a.Before == 0 && a.After == 0 }

// Next returns the adjustment after a segment starting at seq changed the stream's length by
// delta, with the kernel's own two-level rule (nf_ct_seqadj_set, as nf_nat_ftp uses it): a
// resize in a later segment moves the correction point there and makes the previous After the
// new Before; another resize in the same segment only adds to After.
func (a SeqAdj) Next(seq uint32, delta int32) SeqAdj {
	if delta == 0 {
		return a
	}
	if a.Before == a.After || int32(a.Pos-seq) < 0 {
		a.Pos, a.Before = seq, a.After
	}
	a.After += delta
	return a
}

// SeqOffset is what the kernel adds to sequence number v of a segment of this direction
// (nf_ct_seq_adjust): Before for a segment starting at or before Pos, After for a later one.
func (a SeqAdj) SeqOffset(v uint32) int32 {
	if int32(v-a.Pos) > 0 {
		return a.After
	}
	return a.Before
}

// AckOffset is what the kernel subtracts from acknowledgment number v (or a SACK edge) of the
// other direction, acknowledging this one.
func (a SeqAdj) AckOffset(v uint32) int32 {
	if int32(v-uint32(a.Before)-a.Pos) > 0 {
		return a.After
	}
	return a.Before
}

// ErrNoSeqAdj: the connection's conntrack entry has no sequence-adjustment extension, so the
// kernel would not carry a change of the stream's length. The kernel adds the extension only
// when NAT changes the connection's tuple while a helper is attached (DESIGN.md).
var ErrNoSeqAdj = errors.New("connection has no sequence adjustment extension (no NAT after the carrier helper)")

// ctnetlink attributes of a sequence adjustment (nfnetlink_conntrack.h).
const (
	ctaSeqAdjOrig   = 15     // CTA_SEQ_ADJ_ORIG
	ctaSeqAdjReply  = 16     // CTA_SEQ_ADJ_REPLY
	ctaZone         = 18     // CTA_ZONE
	ctaSeqAdjPos    = 1      // CTA_SEQADJ_CORRECTION_POS
	ctaSeqAdjBefore = 2      // CTA_SEQADJ_OFFSET_BEFORE
	ctaSeqAdjAfter  = 3      // CTA_SEQADJ_OFFSET_AFTER
	ipsSeqAdjust    = 1 << 6 // IPS_SEQ_ADJUST
)

// SetSeqAdj registers a as the sequence adjustment of direction d of the connection f (found
// by f.Orig in f.Zone) and, when verify is set, reads the entry back and returns ErrNoSeqAdj
// unless the kernel kept exactly a. The kernel applies it to the next packet it sees of the
// connection, so it must be set before the packet whose length changed is released.
//
// The attribute is built here rather than through ti-mo/conntrack: v0.6.0 sends a
// SequenceAdjust only when all three values are non-zero, and the first resize of a stream
// has Before = 0.
func (c *Conn) SetSeqAdj(f Flow, d Dir, a SeqAdj, verify bool) error {
	f.Orig = f.Orig.unmap()
	if !f.Orig.IsValid() {
		return fmt.Errorf("set seqadj %s: %w", f.Orig, errBadTuple)
	}
	if d > Reply {
		return fmt.Errorf("set seqadj %s: direction %d: %w", f.Orig, d, errBadTuple)
	}
	typ := uint16(ctaSeqAdjOrig)
	if d == Reply {
		typ = ctaSeqAdjReply
	}
	attrs := []netfilter.Attribute{tupleAttr(ctaTupleOrig, f.Orig.Src, f.Orig.Dst)}
	if f.Zone != 0 {
		attrs = append(attrs, netfilter.Attribute{Type: ctaZone, Data: netfilter.Uint16Bytes(f.Zone)})
	}
	attrs = append(attrs, netfilter.Attribute{Type: typ, Nested: true, Children: []netfilter.Attribute{
		{Type: ctaSeqAdjPos, Data: netfilter.Uint32Bytes(a.Pos)},
		{Type: ctaSeqAdjBefore, Data: netfilter.Uint32Bytes(uint32(a.Before))},
		{Type: ctaSeqAdjAfter, Data: netfilter.Uint32Bytes(uint32(a.After))},
	}})
	// IPCTNL_MSG_CT_NEW without NLM_F_CREATE updates an existing entry only; the kernel raises
	// an update event for it (IPCT_SEQADJ), which conntrackd replicates.
	if err := c.query(netfilter.NFSubsysCTNetlink, ipctnlMsgCTNew, family(f.Orig.Src.Addr()), attrs); err != nil {
		return kernelErr("set seqadj", f.Orig.String(), err, errnoFlow)
	}
	if !verify {
		return nil
	}
	got, err := c.get(f.Orig, f.Zone)
	if err != nil {
		return kernelErr("set seqadj: read back", f.Orig.String(), err, errnoFlow)
	}
	fl, ok := flowFrom(&got)
	if !ok {
		return fmt.Errorf("set seqadj %s: %w", f.Orig, errNotTCP)
	}
	if !fl.Adjusting || fl.SeqAdj[d] != a {
		return fmt.Errorf("set seqadj %s %s %+v: kernel has %+v: %w", f.Orig, d, a, fl.SeqAdj[d], ErrNoSeqAdj)
	}
	return nil
}

// get reads the entry whose original tuple is t in zone.
func (c *Conn) get(t Tuple, zone uint16) (ct.Flow, error) {
	return c.ct.Get(ct.Flow{TupleOrig: ctTuple(t), Zone: zone})
}

// seqAdjFrom converts the library's adjustment.
func seqAdjFrom(s ct.SequenceAdjust) SeqAdj {
	return SeqAdj{Pos: s.Position, Before: int32(s.OffsetBefore), After: int32(s.OffsetAfter)}
}
